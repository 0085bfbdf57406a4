//! A bar chart of relay throughput by workers and batch size, as a self-contained SVG: the
//! outbox, the raw-SQL baseline and, where it was measured, pgmq.

use std::fmt::Write;

/// One group of bars: workers, batch size, and events/s of the outbox, the raw baseline and
/// pgmq (drained with as many consumers reading as many per call, deleting on ack).
pub type Row = (usize, usize, f64, f64, Option<f64>);

pub fn relay_svg(rows: &[Row]) -> String {
    let (width, height, left, bottom, top) = (760.0, 380.0, 70.0, 60.0, 40.0);
    let max = rows
        .iter()
        .map(|r| r.2.max(r.3).max(r.4.unwrap_or(0.0)))
        .fold(1.0, f64::max)
        * 1.1;
    let plot_h = height - bottom - top;
    let group_w = (width - left - 20.0) / rows.len().max(1) as f64;
    let bar_w = group_w * 0.7 / 3.0;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="22" text-anchor="middle" font-size="15">Relay throughput (events/s, no-op transport): outbox, raw SQL, pgmq</text>
"##,
        cx = width / 2.0
    );
    for i in 0..=5 {
        let v = max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label:.0}k</text>"##,
            x2 = width - 20.0,
            yy = y(v),
            tx = left - 6.0,
            ty = y(v) + 4.0,
            label = v / 1000.0
        );
    }
    for (i, (workers, batch, outbox, raw, pgmq)) in rows.iter().enumerate() {
        let gx = left + group_w * i as f64 + group_w * 0.15;
        let bars = [
            Some((outbox, "#2b6cb0")),
            Some((raw, "#a0aec0")),
            pgmq.as_ref().map(|p| (p, "#dd6b20")),
        ];
        for (j, (value, color)) in bars
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| Some((j, b?)))
        {
            let x = gx + bar_w * j as f64;
            let _ = writeln!(
                svg,
                r##"<rect x="{x:.1}" y="{top_y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{color}"/><text x="{tx:.1}" y="{ly:.1}" text-anchor="middle" font-size="10">{v:.0}k</text>"##,
                top_y = y(*value),
                h = y(0.0) - y(*value),
                tx = x + bar_w / 2.0,
                ly = y(*value) - 3.0,
                v = value / 1000.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{tx:.1}" y="{ty:.1}" text-anchor="middle">{workers}w × {batch}</text>"##,
            tx = gx + bar_w * 1.5,
            ty = height - bottom + 18.0
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{lx}" y="{ly}" width="12" height="12" fill="#2b6cb0"/><text x="{tx}" y="{ty}">outbox (locked claim, one settlement per batch)</text>
<rect x="{lx2}" y="{ly}" width="12" height="12" fill="#a0aec0"/><text x="{tx2}" y="{ty}">raw SQL (claim-and-mark in one statement)</text>
<rect x="{lx3}" y="{ly}" width="12" height="12" fill="#dd6b20"/><text x="{tx3}" y="{ty}">pgmq (read + delete)</text>
<text x="{cx}" y="{by}" text-anchor="middle">workers × batch size</text>
</svg>
"##,
        lx = left,
        ly = height - 16.0,
        tx = left + 16.0,
        ty = height - 6.0,
        lx2 = left + 250.0,
        tx2 = left + 266.0,
        lx3 = left + 545.0,
        tx3 = left + 561.0,
        cx = width / 2.0,
        by = height - bottom + 34.0
    );
    svg
}
