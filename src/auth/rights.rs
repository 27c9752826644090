//! Room rights: what a token lets its holder do, and in which rooms.
//!
//! A token's optional `rooms` claim maps room patterns to lists of rights:
//! `{"chat.*": ["subscribe", "publish"], "news": ["subscribe", "history", "presence"]}`.
//! A pattern is `*` (every room), `prefix*` (rooms starting with `prefix`) or an exact room
//! name; the rights in a room are the union of the rights of every pattern that matches it,
//! so the order of the entries never matters. Patterns are deliberately this simple — no
//! regular expressions, no `*` in the middle — so that checking a right costs a few prefix
//! comparisons and an issuer cannot write a pattern that means something it did not intend.
//! Anything the claim cannot mean (an unknown right, a misplaced `*`, more than
//! [`MAX_ENTRIES`] patterns) is refused when the token is verified, not when a right is used.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Most patterns one `rooms` claim may hold; checking a right walks them all.
pub const MAX_ENTRIES: usize = 64;

/// One thing a client can do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Join the room and receive its events.
    Subscribe,
    /// Send events to the room.
    Publish,
    /// Read the room's history.
    History,
    /// See who is in the room.
    Presence,
}

impl Right {
    pub const ALL: [Right; 4] = [
        Right::Subscribe,
        Right::Publish,
        Right::History,
        Right::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Subscribe => "subscribe",
            Right::Publish => "publish",
            Right::History => "history",
            Right::Presence => "presence",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Right::Subscribe => 1,
            Right::Publish => 2,
            Right::History => 4,
            Right::Presence => 8,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Right`]s, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const ALL: Rights = Rights(1 | 2 | 4 | 8);

    pub fn contains(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }
    pub fn with(self, right: Right) -> Rights {
        Rights(self.0 | right.bit())
    }
    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Right> for Rights {
    fn from_iter<I: IntoIterator<Item = Right>>(iter: I) -> Rights {
        iter.into_iter().fold(Rights::NONE, Rights::with)
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Right::ALL.iter().filter(|r| self.contains(**r)))
            .finish()
    }
}

/// Which rooms an entry of the `rooms` claim applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every room.
    Any,
    /// `prefix*`: every room whose name starts with the prefix (never empty).
    Prefix(Box<str>),
    /// A room name, matched exactly.
    Exact(Box<str>),
}

/// Why a string is not a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a room pattern must not be empty")]
    Empty,
    #[error("'*' may only end a room pattern: {0:?}")]
    MisplacedStar(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        match s.find('*') {
            None if s.is_empty() => Err(PatternError::Empty),
            None => Ok(Pattern::Exact(s.into())),
            Some(i) if i + 1 != s.len() => Err(PatternError::MisplacedStar(s.to_string())),
            Some(0) => Ok(Pattern::Any),
            Some(i) => Ok(Pattern::Prefix(s[..i].into())),
        }
    }

    pub fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => room.starts_with(&**p),
            Pattern::Exact(name) => room == &**name,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Exact(name) => f.write_str(name),
        }
    }
}

/// The `rooms` claim: at most [`MAX_ENTRIES`] patterns, each with the rights it grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomRights {
    entries: Vec<(Pattern, Rights)>,
}

impl RoomRights {
    pub fn entries(&self) -> &[(Pattern, Rights)] {
        &self.entries
    }

    /// The union of the rights of every pattern that matches `room`.
    pub fn rights_for(&self, room: &str) -> Rights {
        self.entries
            .iter()
            .filter(|(p, _)| p.matches(room))
            .fold(Rights::NONE, |acc, (_, r)| acc.union(*r))
    }

    pub fn allows(&self, room: &str, right: Right) -> bool {
        self.entries
            .iter()
            .any(|(p, r)| r.contains(right) && p.matches(room))
    }
}

impl<'de> Deserialize<'de> for RoomRights {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RoomRightsVisitor;

        impl<'de> Visitor<'de> for RoomRightsVisitor {
            type Value = RoomRights;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping room patterns to lists of rights")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RoomRights, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.len() == MAX_ENTRIES {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_ENTRIES} room patterns"
                        )));
                    }
                    let pattern = Pattern::parse(&key).map_err(de::Error::custom)?;
                    let rights: Vec<Right> = map.next_value()?;
                    entries.push((pattern, rights.into_iter().collect()));
                }
                Ok(RoomRights { entries })
            }
        }

        deserializer.deserialize_map(RoomRightsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(json: &str) -> RoomRights {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Any));
        assert_eq!(
            Pattern::parse("chat.*"),
            Ok(Pattern::Prefix("chat.".into()))
        );
        assert_eq!(Pattern::parse("news"), Ok(Pattern::Exact("news".into())));
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse("a*b"),
            Err(PatternError::MisplacedStar(_))
        ));
        assert!(matches!(
            Pattern::parse("**"),
            Err(PatternError::MisplacedStar(_))
        ));
        assert!(matches!(
            Pattern::parse("*a"),
            Err(PatternError::MisplacedStar(_))
        ));
        for s in ["*", "chat.*", "news"] {
            assert_eq!(Pattern::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let r = rooms(r#"{"news": ["subscribe"]}"#);
        assert!(r.allows("news", Right::Subscribe));
        assert!(!r.allows("news", Right::Publish));
        assert!(!r.allows("news2", Right::Subscribe));
        assert!(!r.allows("new", Right::Subscribe));
    }

    #[test]
    fn prefix_patterns_match_by_prefix() {
        let r = rooms(r#"{"chat.*": ["subscribe", "publish"]}"#);
        assert!(r.allows("chat.lobby", Right::Publish));
        assert!(r.allows("chat.", Right::Subscribe));
        assert!(!r.allows("chat", Right::Subscribe));
        assert!(!r.allows("chatx", Right::Subscribe));
        assert!(!r.allows("chat.lobby", Right::History));
    }

    #[test]
    fn star_matches_every_room() {
        let r = rooms(r#"{"*": ["history"]}"#);
        assert!(r.allows("anything", Right::History));
        assert!(r.allows("chat.lobby", Right::History));
        assert!(!r.allows("anything", Right::Subscribe));
    }

    #[test]
    fn rights_of_matching_patterns_are_united() {
        let r = rooms(
            r#"{"*": ["subscribe"], "chat.*": ["publish"], "chat.vip": ["presence"], "news": ["history"]}"#,
        );
        let vip = r.rights_for("chat.vip");
        assert_eq!(
            vip,
            Rights::NONE
                .with(Right::Subscribe)
                .with(Right::Publish)
                .with(Right::Presence)
        );
        for right in [Right::Subscribe, Right::Publish, Right::Presence] {
            assert!(r.allows("chat.vip", right));
        }
        assert!(!r.allows("chat.vip", Right::History));
        assert!(r.allows("chat.other", Right::Publish));
        assert!(!r.allows("chat.other", Right::Presence));
        assert!(r.allows("news", Right::History) && r.allows("news", Right::Subscribe));
        assert!(!r.allows("news", Right::Publish));
    }

    #[test]
    fn empty_claim_grants_nothing() {
        let r = rooms("{}");
        assert!(Right::ALL.iter().all(|right| !r.allows("news", *right)));
        assert!(r.rights_for("news").is_empty());
    }

    #[test]
    fn bad_claims_are_refused() {
        assert!(serde_json::from_str::<RoomRights>(r#"{"a*b": ["subscribe"]}"#).is_err());
        assert!(serde_json::from_str::<RoomRights>(r#"{"news": ["admin"]}"#).is_err());
        assert!(serde_json::from_str::<RoomRights>(r#"{"news": ["Subscribe"]}"#).is_err());
        assert!(serde_json::from_str::<RoomRights>(r#"{"news": "subscribe"}"#).is_err());
        assert!(serde_json::from_str::<RoomRights>(r#"["news"]"#).is_err());
        let at_limit: serde_json::Map<String, serde_json::Value> = (0..MAX_ENTRIES)
            .map(|i| (format!("r{i}"), serde_json::json!(["subscribe"])))
            .collect();
        let r: RoomRights = serde_json::from_value(at_limit.clone().into()).unwrap();
        assert_eq!(r.entries().len(), MAX_ENTRIES);
        let mut over = at_limit;
        over.insert("one-more".into(), serde_json::json!(["subscribe"]));
        assert!(serde_json::from_value::<RoomRights>(over.into()).is_err());
    }

    #[test]
    fn rights_set() {
        let all: Rights = Right::ALL.into_iter().collect();
        assert_eq!(all, Rights::ALL);
        assert!(Right::ALL.iter().all(|r| all.contains(*r)));
        assert!(Right::ALL.iter().all(|r| !Rights::NONE.contains(*r)));
        assert_eq!(
            format!("{:?}", Rights::NONE.with(Right::History)),
            "{History}"
        );
    }
}
