//! A JSON object's members with each value as its JSON text: a vector kept
//! sorted by key, each key once. An entry's `data` has a handful of keys,
//! taken out one by one by the parser; in a `BTreeMap` the node shuffling
//! of those inserts and removals was about a quarter of a small entry's
//! parse (`perf` of criterion's `parse_entry/trace_start`).
//!
//! Built by [`RawObject::push`] in any order, then [`RawObject::settle`]d
//! once (a stable sort, the last of a duplicated key kept, as a parser that
//! inserts into a map keeps it): a sort costs n log n however the keys come,
//! where inserting each in place could cost n² on a hostile entry with
//! thousands of keys.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

type Member<'a> = (Cow<'a, str>, Cow<'a, RawValue>);

/// Keys sorted as `str` sorts them (as a `BTreeMap<String, _>` iterates),
/// each once.
#[derive(Debug, Default)]
pub struct RawObject<'a>(Vec<Member<'a>>);

impl<'a> RawObject<'a> {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a member while building; [`Self::settle`] before any lookup.
    pub(super) fn push(&mut self, key: Cow<'a, str>, value: Cow<'a, RawValue>) {
        self.0.push((key, value));
    }

    /// Sorts the members pushed by key, keeping the last of each key.
    pub(super) fn settle(&mut self) {
        if self.0.len() < 2 {
            return;
        }
        // Stable: members of one key stay in the order pushed.
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        // `dedup_by` keeps the first of a run: reverse so that is the last.
        self.0.reverse();
        self.0.dedup_by(|later, kept| later.0 == kept.0);
        self.0.reverse();
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.position(key).ok().map(|at| self.0[at].1.as_ref())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    pub fn remove(&mut self, key: &str) -> Option<Cow<'a, RawValue>> {
        self.position(key).ok().map(|at| self.0.remove(at).1)
    }

    /// Sets `key`, replacing its value if it has one.
    pub fn insert(&mut self, key: Cow<'a, str>, value: Cow<'a, RawValue>) {
        match self.position(key.as_ref()) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (key, value)),
        }
    }

    /// Adds `other`'s members; its value wins where both have a key.
    pub fn extend(&mut self, other: RawObject<'a>) {
        if self.0.is_empty() {
            *self = other;
            return;
        }
        self.0.extend(other.0);
        self.settle();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Cow<'a, str>> {
        self.0.iter().map(|(key, _)| key)
    }

    /// The same members, owning their keys and values.
    pub fn into_owned(self) -> RawObject<'static> {
        RawObject(
            self.0
                .into_iter()
                .map(|(key, value)| (Cow::Owned(key.into_owned()), Cow::Owned(value.into_owned())))
                .collect(),
        )
    }
}

impl<'a> FromIterator<Member<'a>> for RawObject<'a> {
    fn from_iter<I: IntoIterator<Item = Member<'a>>>(members: I) -> Self {
        let mut object = Self(members.into_iter().collect());
        object.settle();
        object
    }
}

/// `object["key"]`, as on a map: panics when the key is missing.
impl<'a> std::ops::Index<&str> for RawObject<'a> {
    type Output = Cow<'a, RawValue>;

    fn index(&self, key: &str) -> &Cow<'a, RawValue> {
        match self.position(key) {
            Ok(at) => &self.0[at].1,
            Err(_) => panic!("no member {key:?} in the object"),
        }
    }
}

impl Serialize for RawObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn value(text: &str) -> Cow<'static, RawValue> {
        Cow::Owned(RawValue::from_string(text.to_owned()).unwrap())
    }

    fn text(object: &RawObject<'_>) -> String {
        serde_json::to_string(object).unwrap()
    }

    #[test]
    fn members_pushed_in_any_order_settle_sorted_with_the_last_of_a_key() {
        let mut object = RawObject::new();
        for (key, v) in [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("a", "5")] {
            object.push(Cow::Borrowed(key), value(v));
        }
        object.settle();
        assert_eq!(text(&object), r#"{"a":5,"b":3,"c":4}"#);
    }

    #[test]
    fn insert_replaces_remove_takes_and_extend_lets_the_other_win() {
        let mut object: RawObject = [("m", "1"), ("z", "2")]
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), value(v)))
            .collect();
        object.insert(Cow::Borrowed("a"), value("0"));
        object.insert(Cow::Borrowed("m"), value("9"));
        assert_eq!(object.remove("z").as_deref().map(RawValue::get), Some("2"));
        assert!(object.remove("z").is_none());
        let other = [("m", "\"other\""), ("b", "true")]
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), value(v)))
            .collect();
        object.extend(other);
        assert_eq!(text(&object), r#"{"a":0,"b":true,"m":"other"}"#);
    }

    proptest! {
        /// The same members, lookups and text as the `BTreeMap` it replaces,
        /// whatever the keys (duplicates, shared prefixes, non-ASCII).
        #[test]
        fn behaves_as_a_btree_map(
            pushed in prop::collection::vec(("[a-c\u{e9}]{0,3}", 0u32..100), 0..40),
            removed in prop::collection::vec("[a-c\u{e9}]{0,3}", 0..10),
            inserted in prop::collection::vec(("[a-c\u{e9}]{0,3}", 0u32..100), 0..10),
        ) {
            let mut object = RawObject::new();
            let mut model = BTreeMap::new();
            for (key, n) in &pushed {
                object.push(Cow::Owned(key.clone()), value(&n.to_string()));
                model.insert(key.clone(), n.to_string());
            }
            object.settle();
            for key in &removed {
                prop_assert_eq!(
                    object.remove(key).map(|v| v.get().to_owned()),
                    model.remove(key)
                );
            }
            for (key, n) in &inserted {
                object.insert(Cow::Owned(key.clone()), value(&n.to_string()));
                model.insert(key.clone(), n.to_string());
            }
            for key in model.keys() {
                prop_assert_eq!(object.get(key).map(RawValue::get), model.get(key).map(String::as_str));
            }
            prop_assert_eq!(object.len(), model.len());
            let expected = serde_json::to_string(
                &model.iter().map(|(k, v)| (k, RawValue::from_string(v.clone()).unwrap())).collect::<BTreeMap<_, _>>(),
            ).unwrap();
            prop_assert_eq!(text(&object), expected);
        }
    }
}
