//! The messages of PostgreSQL's `pgoutput` logical decoding plugin (protocol version 1, binary
//! tuples), as far as the outbox stream reads them: transaction boundaries, relation
//! descriptions and inserted rows. Everything else is skipped by its tag.
//!
//! Format: "Logical Replication Message Formats" in the PostgreSQL manual. Integers are big-endian;
//! strings are NUL-terminated.

use std::fmt;

/// A decoding failure: the message, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

/// One column value of a tuple, borrowed from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Null,
    /// An unchanged TOASTed value (only in updates, which the outbox's publication excludes).
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// A column of a relation, as the `R` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    Commit {
        end_lsn: u64,
    },
    Relation {
        id: u32,
        namespace: String,
        name: String,
        columns: Vec<Column>,
    },
    Insert {
        relation: u32,
        values: Vec<Value<'a>>,
    },
    /// Any other message (update, delete, truncate, type, origin, logical message).
    Other(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| Malformed(format!("{what} runs past the end at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<String, Malformed> {
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Malformed(format!("{what} is not NUL-terminated")))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| Malformed(format!("{what} is not UTF-8")))?
            .to_owned();
        self.at += len + 1;
        Ok(s)
    }
}

/// Decodes one message.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message<'_>, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8("the tag")?;
    match tag {
        b'B' => {
            let final_lsn = r.u64("BEGIN's LSN")?;
            let commit_time = r.u64("BEGIN's commit time")? as i64;
            Ok(Message::Begin {
                final_lsn,
                commit_time,
            })
        }
        b'C' => {
            let _flags = r.u8("COMMIT's flags")?;
            let _commit_lsn = r.u64("COMMIT's LSN")?;
            let end_lsn = r.u64("COMMIT's end LSN")?;
            Ok(Message::Commit { end_lsn })
        }
        b'R' => {
            let id = r.u32("RELATION's id")?;
            let namespace = r.string("RELATION's namespace")?;
            let name = r.string("RELATION's name")?;
            let _identity = r.u8("RELATION's replica identity")?;
            let n = r.u16("RELATION's column count")?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let _flags = r.u8("a column's flags")?;
                let name = r.string("a column's name")?;
                let type_oid = r.u32("a column's type")?;
                let _modifier = r.u32("a column's type modifier")?;
                columns.push(Column { name, type_oid });
            }
            Ok(Message::Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32("INSERT's relation")?;
            let kind = r.u8("INSERT's tuple marker")?;
            if kind != b'N' {
                return Err(Malformed(format!(
                    "INSERT's tuple marker is {:?}, not 'N'",
                    kind as char
                )));
            }
            let n = r.u16("the tuple's column count")?;
            let mut values = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let value = match r.u8("a value's kind")? {
                    b'n' => Value::Null,
                    b'u' => Value::Unchanged,
                    kind @ (b't' | b'b') => {
                        let len = r.u32("a value's length")? as usize;
                        let data = r.take(len, "a value")?;
                        if kind == b't' {
                            Value::Text(data)
                        } else {
                            Value::Binary(data)
                        }
                    }
                    other => {
                        return Err(Malformed(format!("unknown value kind {:?}", other as char)));
                    }
                };
                values.push(value);
            }
            Ok(Message::Insert { relation, values })
        }
        other => Ok(Message::Other(other)),
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as UTC, if representable.
pub(crate) fn pg_time(micros: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    micros
        .checked_add(PG_EPOCH_MICROS)
        .and_then(chrono::DateTime::from_timestamp_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn transaction_boundaries_are_read() {
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        begin.extend_from_slice(&1_000_000i64.to_be_bytes());
        begin.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&begin),
            Ok(Message::Begin {
                final_lsn: 0x1_0000_0010,
                commit_time: 1_000_000
            })
        );
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&5u64.to_be_bytes());
        commit.extend_from_slice(&9u64.to_be_bytes());
        commit.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(decode(&commit), Ok(Message::Commit { end_lsn: 9 }));
        assert_eq!(
            pg_time(1_000_000).map(|t| t.to_rfc3339()),
            Some("2000-01-01T00:00:01+00:00".into())
        );
    }

    #[test]
    fn relations_and_inserts_are_read() {
        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16384u32.to_be_bytes());
        string(&mut rel, "public");
        string(&mut rel, "outbox_event");
        rel.push(b'd');
        rel.extend_from_slice(&2u16.to_be_bytes());
        for (name, oid) in [("id", 2950u32), ("payload", 3802)] {
            rel.push(1);
            string(&mut rel, name);
            rel.extend_from_slice(&oid.to_be_bytes());
            rel.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let Ok(Message::Relation {
            id, name, columns, ..
        }) = decode(&rel)
        else {
            panic!("not a relation: {:?}", decode(&rel));
        };
        assert_eq!(
            (id, name.as_str(), columns.len()),
            (16384, "outbox_event", 2)
        );
        assert_eq!(columns[1].type_oid, 3802);

        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend_from_slice(&3u16.to_be_bytes());
        insert.push(b'b');
        insert.extend_from_slice(&2u32.to_be_bytes());
        insert.extend_from_slice(&[1, 2]);
        insert.push(b'n');
        insert.push(b't');
        insert.extend_from_slice(&1u32.to_be_bytes());
        insert.push(b'x');
        assert_eq!(
            decode(&insert),
            Ok(Message::Insert {
                relation: 16384,
                values: vec![Value::Binary(&[1, 2]), Value::Null, Value::Text(b"x")],
            })
        );
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[b'B', 0, 0]).is_err());
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&1u32.to_be_bytes());
        insert.push(b'N');
        insert.extend_from_slice(&1u16.to_be_bytes());
        insert.push(b'b');
        insert.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&insert).is_err(), "a length past the end");
        let mut odd = vec![b'I'];
        odd.extend_from_slice(&1u32.to_be_bytes());
        odd.push(b'N');
        odd.extend_from_slice(&1u16.to_be_bytes());
        odd.push(b'?');
        assert!(decode(&odd).is_err());
        assert_eq!(decode(b"Y"), Ok(Message::Other(b'Y')));
    }
}
