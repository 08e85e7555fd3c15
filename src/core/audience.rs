//! Audiences: `and`/`or`/`not` condition trees with three-valued logic, compiled once per datafile.
//!
//! Two trees use the same logic: an audience's own conditions (leaves are [`Condition`]s) and an
//! experiment's `audienceConditions` / `audienceIds` (leaves are audience references). A list whose
//! first element is `"and"`, `"or"` or `"not"` applies that operator to the rest; any other list
//! is an `or` over all its elements; `not` looks only at its first operand.

use super::condition::Condition;
use super::user::UserContext;
use serde_json::Value;

/// A compiled condition tree over leaves of type `L`.
#[derive(Debug, Clone)]
pub enum Tree<L> {
    And(Vec<Tree<L>>),
    Or(Vec<Tree<L>>),
    Not(Option<Box<Tree<L>>>),
    Leaf(L),
    /// A shape the SDKs cannot evaluate (e.g. an empty nested list): unknown.
    Invalid,
}

impl<L> Tree<L> {
    /// Builds a tree from JSON, compiling each non-list node with `leaf`.
    pub fn compile(v: &Value, leaf: &mut impl FnMut(&Value) -> Tree<L>) -> Self {
        let Value::Array(items) = v else {
            return leaf(v);
        };
        let Some(first) = items.first() else {
            return Tree::Invalid;
        };
        let mut operands = |items: &[Value]| -> Vec<Tree<L>> {
            items.iter().map(|i| Tree::compile(i, leaf)).collect()
        };
        match first.as_str() {
            Some("and") => Tree::And(operands(&items[1..])),
            Some("or") => Tree::Or(operands(&items[1..])),
            Some("not") => Tree::Not(operands(&items[1..]).into_iter().next().map(Box::new)),
            _ => Tree::Or(operands(items)),
        }
    }

    /// Evaluates the tree; `eval_leaf` answers for each leaf.
    pub fn evaluate(&self, eval_leaf: &mut impl FnMut(&L) -> Option<bool>) -> Option<bool> {
        match self {
            Tree::And(items) => {
                let mut unknown = false;
                for item in items {
                    match item.evaluate(eval_leaf) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Tree::Or(items) => {
                let mut unknown = false;
                for item in items {
                    match item.evaluate(eval_leaf) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
            Tree::Not(inner) => inner.as_ref()?.evaluate(eval_leaf).map(|b| !b),
            Tree::Leaf(l) => eval_leaf(l),
            Tree::Invalid => None,
        }
    }
}

/// An audience, compiled.
#[derive(Debug, Clone)]
pub struct Audience {
    pub id: String,
    pub name: String,
    /// The conditions as the datafile gave them (for `/v1/config` and debug output).
    pub conditions: String,
    pub tree: Tree<usize>,
    /// Every object in the conditions, in the order the SDKs number them (innermost first).
    pub conditions_list: Vec<Condition>,
}

impl Audience {
    /// Compiles an audience from its parsed conditions value.
    ///
    /// The SDKs decode every JSON object in the conditions into a numbered condition, innermost
    /// objects first, and leaves refer to those numbers; the same numbering is kept here so that
    /// even odd datafiles evaluate identically.
    pub fn compile(id: String, name: String, conditions_text: String, conditions: &Value) -> Self {
        let mut list = Vec::new();
        let structure = number_objects(conditions, &mut list);
        let conditions_list: Vec<Condition> = list
            .iter()
            .map(|o| match o {
                Value::Object(m) => Condition::from_object(m),
                _ => Condition::from_object(&serde_json::Map::new()),
            })
            .collect();
        let tree = Tree::compile(&structure, &mut |leaf: &Value| match leaf.as_u64() {
            Some(i) if !leaf.is_f64() => Tree::Leaf(i as usize),
            _ => Tree::Invalid,
        });
        Self {
            id,
            name,
            conditions: conditions_text,
            tree,
            conditions_list,
        }
    }

    /// Whether `user` is in this audience (three-valued).
    pub fn evaluate(&self, user: &UserContext) -> Option<bool> {
        self.tree
            .evaluate(&mut |i: &usize| self.conditions_list.get(*i)?.evaluate(user))
    }
}

/// Replaces every object (post-order) by its index, pushing the rewritten object to `list`.
fn number_objects(v: &Value, list: &mut Vec<Value>) -> Value {
    match v {
        Value::Object(m) => {
            let rewritten: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, x)| (k.clone(), number_objects(x, list)))
                .collect();
            list.push(Value::Object(rewritten));
            Value::from(list.len() - 1)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|x| number_objects(x, list)).collect())
        }
        other => other.clone(),
    }
}

/// An experiment's audience combination; leaves index the project's audiences (or are unknown).
pub type AudienceRefs = Tree<Option<usize>>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(tree: Value, leaves: &[(&str, Option<bool>)]) -> Option<bool> {
        let t: Tree<String> = Tree::compile(&tree, &mut |v: &Value| {
            Tree::Leaf(v.as_str().unwrap_or("").to_string())
        });
        t.evaluate(&mut |l: &String| leaves.iter().find(|(k, _)| k == l).and_then(|(_, r)| *r))
    }

    // Truth tables from the SDKs' condition-tree evaluator tests.
    #[test]
    fn and_or_not_three_valued() {
        let t = Some(true);
        let f = Some(false);
        assert_eq!(eval(json!(["and", "a", "b"]), &[("a", t), ("b", t)]), t);
        assert_eq!(
            eval(json!(["and", "a", "b"]), &[("a", t), ("b", None)]),
            None
        );
        assert_eq!(eval(json!(["and", "a", "b"]), &[("a", None), ("b", f)]), f);
        assert_eq!(
            eval(json!(["or", "a", "b"]), &[("a", f), ("b", None)]),
            None
        );
        assert_eq!(eval(json!(["or", "a", "b"]), &[("a", None), ("b", t)]), t);
        assert_eq!(eval(json!(["or", "a", "b"]), &[("a", f), ("b", f)]), f);
        assert_eq!(eval(json!(["not", "a"]), &[("a", t)]), f);
        assert_eq!(eval(json!(["not", "a"]), &[("a", None)]), None);
        assert_eq!(eval(json!(["not", "a", "b"]), &[("a", f), ("b", f)]), t);
        assert_eq!(eval(json!(["not"]), &[]), None);
        assert_eq!(eval(json!(["and"]), &[]), t);
        assert_eq!(eval(json!(["or"]), &[]), f);
    }

    #[test]
    fn bare_list_is_or_and_nesting_works() {
        let t = Some(true);
        let f = Some(false);
        assert_eq!(eval(json!(["a", "b"]), &[("a", f), ("b", t)]), t);
        assert_eq!(
            eval(
                json!(["and", ["or", "a", "b"], ["not", "c"]]),
                &[("a", f), ("b", t), ("c", f)]
            ),
            t
        );
        assert_eq!(eval(json!(["and", []]), &[]), None);
    }

    #[test]
    fn audience_numbers_objects_innermost_first() {
        let conditions = json!(["and", ["or", {"name":"a","type":"custom_attribute","value":1}],
                                       {"name":"b","type":"custom_attribute","value":"x","match":"exact"}]);
        let a = Audience::compile("1".into(), "n".into(), conditions.to_string(), &conditions);
        assert_eq!(a.conditions_list.len(), 2);
        let u = UserContext::new("u", json!({"a":1,"b":"x"}).as_object().unwrap().clone());
        assert_eq!(a.evaluate(&u), Some(true));
        let u = UserContext::new("u", json!({"a":1,"b":"y"}).as_object().unwrap().clone());
        assert_eq!(a.evaluate(&u), Some(false));
        // A single condition object (no list) is a leaf.
        let single = json!({"name":"a","type":"custom_attribute","value":1,"match":"exact"});
        let s = Audience::compile("2".into(), "n".into(), single.to_string(), &single);
        let u = UserContext::new("u", json!({"a":1}).as_object().unwrap().clone());
        assert_eq!(s.evaluate(&u), Some(true));
    }
}
