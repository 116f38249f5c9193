//! What a data listener asks for: per action, how much of the changed row its events show.
use pgrx::PgSqlErrorCode as Code;

use crate::core::errors::{self, raise};

/// A change of a table row (or a TRUNCATE of the table).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::Truncate => "TRUNCATE",
        }
    }
}

/// What a data listener asked for, per action: 0 off, 1 key, 2 changes, 3 full rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataSpec {
    pub insert: u8,
    pub update: u8,
    pub delete: u8,
    pub truncate: bool,
}

impl DataSpec {
    /// Parse `'INSERT,UPDATE=1,DELETE=3,TRUNCATE'`. A bare action means level 2 (TRUNCATE: on).
    pub fn parse(spec: &str) -> DataSpec {
        let hint = || {
            Some(
                "List actions INSERT, UPDATE, DELETE, each optionally =0 (off), =1 (key), =2 (changes, \
                 the default) or =3 (full rows), and TRUNCATE, e.g. 'INSERT,UPDATE=1,DELETE=3'."
                    .to_string(),
            )
        };
        let bad = |msg: String| -> ! { raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, msg, hint()) };
        let mut seen: Vec<String> = Vec::new();
        let mut out = DataSpec::default();
        if spec.trim().is_empty() {
            bad("the events spec is empty".into());
        }
        for part in spec.split(',') {
            let part = part.trim();
            let (action, level) = match part.split_once('=') {
                Some((a, l)) => (a.trim().to_ascii_uppercase(), Some(l.trim())),
                None => (part.to_ascii_uppercase(), None),
            };
            if action.is_empty() {
                bad(format!(
                    "the events spec \"{}\" has an empty entry",
                    errors::shown(spec)
                ));
            }
            if seen.contains(&action) {
                bad(format!(
                    "action {} appears twice in the events spec \"{}\"",
                    errors::shown(&action),
                    errors::shown(spec)
                ));
            }
            seen.push(action.clone());
            let level: u8 = match level {
                None => 2,
                Some(l) => match l.parse::<u8>() {
                    Ok(n) if n <= 3 => n,
                    _ => bad(format!(
                        "level \"{}\" of {action} must be 0, 1, 2 or 3",
                        errors::shown(l)
                    )),
                },
            };
            match action.as_str() {
                "INSERT" => out.insert = level,
                "UPDATE" => out.update = level,
                "DELETE" => out.delete = level,
                "TRUNCATE" => match level {
                    0 => out.truncate = false,
                    1 | 2 => out.truncate = true,
                    _ => bad("TRUNCATE is on (TRUNCATE or TRUNCATE=1) or off (=0)".into()),
                },
                other => bad(format!(
                    "unknown action \"{}\" in the events spec",
                    errors::shown(other)
                )),
            }
        }
        if out == DataSpec::default() {
            bad(format!(
                "the events spec \"{}\" turns every action off",
                errors::shown(spec)
            ));
        }
        out
    }

    /// Stored form in `herald.listener.event_types`.
    pub fn items(&self) -> Vec<String> {
        let mut v = vec![
            format!("INSERT={}", self.insert),
            format!("UPDATE={}", self.update),
            format!("DELETE={}", self.delete),
        ];
        if self.truncate {
            v.push("TRUNCATE".into());
        }
        v
    }

    pub fn from_items(items: &[String]) -> DataSpec {
        let mut out = DataSpec::default();
        for item in items {
            let (action, level) = item.split_once('=').unwrap_or((item.as_str(), "1"));
            let level: u8 = level.parse().unwrap_or(0);
            match action {
                "INSERT" => out.insert = level,
                "UPDATE" => out.update = level,
                "DELETE" => out.delete = level,
                "TRUNCATE" => out.truncate = level > 0,
                _ => {}
            }
        }
        out
    }

    pub fn needs_key(&self) -> bool {
        self.insert == 1 || self.update == 1 || self.delete == 1
    }

    pub fn level(&self, action: Action) -> u8 {
        match action {
            Action::Insert => self.insert,
            Action::Update => self.update,
            Action::Delete => self.delete,
            Action::Truncate => self.truncate as u8,
        }
    }
}

/// A set of columns of a table, by attribute index (attnum - 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cols(Vec<u64>);

impl Cols {
    /// From 1-based attnums.
    pub fn of(attnums: &[i32]) -> Cols {
        let mut c = Cols::default();
        for &a in attnums {
            if a > 0 {
                c.insert((a - 1) as usize);
            }
        }
        c
    }
    pub fn insert(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    /// The column indexes in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
    pub fn intersects(&self, other: &Cols) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }
    pub fn minus(&self, other: &Cols) -> Cols {
        let mut out = self.clone();
        for (i, w) in out.0.iter_mut().enumerate() {
            *w &= !other.0.get(i).copied().unwrap_or(0);
        }
        out.trim()
    }
    fn trim(mut self) -> Cols {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }
}
