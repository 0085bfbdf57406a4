// The admin's only script: live overview figures, select-all, and confirmations.
// Everything works without it; it only refreshes and asks.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const cards = document.getElementById("counts");
  if (cards && cards.dataset.refresh) {
    const refresh = async () => {
      try {
        const response = await fetch(cards.dataset.refresh, { credentials: "same-origin" });
        if (!response.ok) return;
        const o = await response.json();
        for (const [status, n] of Object.entries(o.counts)) {
          const value = cards.querySelector(`[data-status="${status}"] .value`);
          if (value) value.textContent = n >= o.cap ? `${o.cap.toLocaleString("en")}+` : n.toLocaleString("en");
        }
        const oldest = document.getElementById("oldest-pending");
        if (oldest && o.oldest_pending_age === null) oldest.textContent = "—";
        else if (oldest) {
          const link = oldest.querySelector("a");
          if (link) link.textContent = o.oldest_pending_age; else oldest.textContent = o.oldest_pending_age;
        }
        const chart = document.getElementById("chart");
        // The chart is rendered (and escaped) by the server.
        if (chart && o.samples.length > 0) chart.innerHTML = o.chart;
        cards.dataset.refreshed = String(Date.now());
      } catch (_) {
        // The next round tries again.
      }
    };
    setInterval(refresh, 5000);
  }

  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[type="checkbox"][name="id"]')) box.checked = all.checked;
    });
  }

  for (const button of document.querySelectorAll("[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
});
