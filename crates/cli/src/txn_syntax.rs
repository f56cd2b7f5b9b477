//! The small language of `balsa txn`: one condition per `--if`, one operation per `--then` /
//! `--else`.
//!
//! ```text
//! condition := FIELD "(" KEY ")" OP VALUE      FIELD: value | version | create | mod | lease
//!                                              OP: = | != | > | <
//! operation := "put" KEY VALUE [--lease HEX]
//!            | "get" KEY [--prefix]
//!            | "del" KEY [--prefix]
//! ```
//!
//! Words are split on spaces; double quotes keep spaces (`put k "two words"`), and `\"` is a
//! quote. `create`/`mod` are revisions, `version` counts puts (0: absent), `lease` is a hex id.

use balsa_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, TxnOp};

/// Splits `s` into words, honouring double quotes.
pub fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => match chars.next() {
                Some(n) => word.get_or_insert_with(String::new).push(n),
                None => return Err(format!("{s:?}: a backslash ends the text")),
            },
            '"' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => out.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quoted {
        return Err(format!("{s:?}: a quote is not closed"));
    }
    out.extend(word);
    Ok(out)
}

/// Parses `value(k) = v` and the like.
pub fn condition(s: &str) -> Result<Compare, String> {
    let bad =
        |why: &str| format!("--if {s:?}: {why} (expected e.g. 'value(KEY) = VALUE', 'version(KEY) > 0')");
    let open = s.find('(').ok_or_else(|| bad("no '('"))?;
    let close = s.find(')').filter(|c| *c > open).ok_or_else(|| bad("no ')'"))?;
    let field = s[..open].trim();
    let key = s[open + 1..close].trim();
    let key = words(key)?.pop().unwrap_or_default();
    let rest = words(&s[close + 1..])?;
    let [op, value] = rest.as_slice() else {
        return Err(bad("want an operator and a value after the key"));
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        _ => return Err(bad("the operator is one of = != > <")),
    };
    let number = || value.parse::<i64>().map_err(|_| bad("want a number"));
    Ok(match field {
        "value" => Compare::value(key, op, value.as_bytes()),
        "version" => Compare::version(key, op, number()?),
        "create" => Compare::create_revision(key, op, number()?),
        "mod" => Compare::mod_revision(key, op, number()?),
        "lease" => {
            Compare::lease(key, op, i64::from_str_radix(value, 16).map_err(|_| bad("want a hex lease id"))?)
        }
        _ => return Err(bad("the field is one of value, version, create, mod, lease")),
    })
}

/// Parses `put k v`, `get k [--prefix]`, `del k [--prefix]`.
pub fn operation(s: &str) -> Result<TxnOp, String> {
    let bad = |why: &str| format!("operation {s:?}: {why} (expected 'put KEY VALUE', 'get KEY', 'del KEY')");
    let w = words(s)?;
    let prefix = w.iter().skip(2).any(|x| x == "--prefix");
    match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["put", key, value] => Ok(TxnOp::put(*key, *value, PutOptions::new())),
        ["put", key, value, "--lease", id] => {
            let id = i64::from_str_radix(id, 16).map_err(|_| bad("want a hex lease id"))?;
            Ok(TxnOp::put(*key, *value, PutOptions::new().lease(id)))
        }
        ["get", key] | ["get", key, "--prefix"] => {
            Ok(TxnOp::get(*key, if prefix { GetOptions::new().prefix() } else { GetOptions::new() }))
        }
        ["del", key] | ["del", key, "--prefix"] => {
            Ok(TxnOp::delete(*key, if prefix { DeleteOptions::new().prefix() } else { DeleteOptions::new() }))
        }
        _ => Err(bad("not understood")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balsa_client::{Compare, CompareOp};

    #[test]
    fn words_keep_quoted_spaces() {
        assert_eq!(words(r#"put k "two words""#).unwrap(), ["put", "k", "two words"]);
        assert_eq!(words(r#"put k "say \"hi\"""#).unwrap(), ["put", "k", "say \"hi\""]);
        assert_eq!(words(r#"put k """#).unwrap(), ["put", "k", ""]);
        assert!(words(r#"put "k"#).is_err());
    }

    #[test]
    fn conditions() {
        assert_eq!(condition("value(k) = v").unwrap(), Compare::value("k", CompareOp::Equal, "v"));
        assert!(condition("version( k )>3").unwrap_err().contains("operator"));
        assert_eq!(condition("version(k) > 3").unwrap(), Compare::version("k", CompareOp::Greater, 3));
        assert_eq!(condition("mod(k) != 7").unwrap(), Compare::mod_revision("k", CompareOp::NotEqual, 7));
        assert_eq!(condition("lease(k) = 1f").unwrap(), Compare::lease("k", CompareOp::Equal, 31));
        assert!(condition("size(k) = 1").unwrap_err().contains("the field is one of"));
        assert!(condition("value k = v").is_err());
    }

    #[test]
    fn operations() {
        assert_eq!(operation("put k v").unwrap(), TxnOp::put("k", "v", PutOptions::new()));
        assert_eq!(operation("get k --prefix").unwrap(), TxnOp::get("k", GetOptions::new().prefix()));
        assert_eq!(operation("del k").unwrap(), TxnOp::delete("k", DeleteOptions::new()));
        assert!(operation("incr k").unwrap_err().contains("not understood"));
    }
}
