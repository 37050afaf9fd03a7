//! CEL for admission (ValidatingAdmissionPolicy and webhook matchConditions), on the `cel`
//! crate: one shared environment (the standard library with the strings, lists and math
//! extensions), compilation with cel-go's error wording (syntax errors, and references to
//! variables the expression may not use, found before it ever runs), JSON objects as CEL
//! values the way Kubernetes converts them (integers as `int`), and runtime errors in cel-go's
//! words.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value;

/// The shared environment.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // The extensions are built in and do not clash with the standard library.
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::lists);
    let _ = env.add_extension(cel::extensions::math);
    Arc::new(env)
});

/// Identifiers every expression may use besides its variables: type names and the
/// namespaces of library functions.
const BUILTIN_IDENTS: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "optional",
    "strings",
    "lists",
    "math",
    "base64",
];

/// A compiled expression.
#[derive(Clone)]
pub struct Expression {
    /// The source, as written.
    pub source: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

/// Line (1-based), column (1-based) and the line's text at a character offset of `src`.
fn locate(src: &str, offset: usize) -> (usize, usize, &str) {
    let mut start = 0;
    for (i, line) in src.split('\n').enumerate() {
        let len = line.chars().count();
        if offset <= start + len {
            return (i + 1, offset - start + 1, line);
        }
        start += len + 1;
    }
    (1, 1, src.lines().next().unwrap_or(""))
}

/// One error as cel-go prints it: `ERROR: <input>:L:C: msg`, the line, and a caret under
/// the column.
fn error_at(line: usize, col: usize, text: &str, msg: &str) -> String {
    format!(
        "ERROR: <input>:{line}:{col}: {msg}\n | {text}\n | {}^",
        ".".repeat(col.saturating_sub(1))
    )
}

/// Finds the first identifier `expr` uses that is neither declared, built in, nor bound by an
/// enclosing comprehension.
fn undeclared<'a>(
    e: &'a IdedExpr,
    declared: &[&str],
    bound: &mut Vec<&'a str>,
) -> Option<(u64, &'a str)> {
    match &e.expr {
        Expr::Ident(name) => (!declared.contains(&name.as_str())
            && !bound.contains(&name.as_str())
            && !BUILTIN_IDENTS.contains(&name.as_str()))
        .then_some((e.id, name.as_str())),
        Expr::Select(s) => undeclared(&s.operand, declared, bound),
        Expr::Call(c) => c
            .target
            .iter()
            .map(|t| t.as_ref())
            .chain(c.args.iter())
            .find_map(|a| undeclared(a, declared, bound)),
        Expr::List(l) => l
            .elements
            .iter()
            .find_map(|a| undeclared(a, declared, bound)),
        Expr::Map(m) => m.entries.iter().find_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => undeclared(&me.key, declared, bound)
                .or_else(|| undeclared(&me.value, declared, bound)),
            EntryExpr::StructField(f) => undeclared(&f.value, declared, bound),
        }),
        Expr::Struct(s) => s.entries.iter().find_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => undeclared(&me.value, declared, bound),
            EntryExpr::StructField(f) => undeclared(&f.value, declared, bound),
        }),
        Expr::Comprehension(c) => {
            if let Some(u) = undeclared(&c.iter_range, declared, bound)
                .or_else(|| undeclared(&c.accu_init, declared, bound))
            {
                return Some(u);
            }
            let depth = bound.len();
            bound.push(c.iter_var.as_str());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.as_str());
            }
            bound.push(c.accu_var.as_str());
            let found = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .find_map(|x| undeclared(x, declared, bound));
            bound.truncate(depth);
            found
        }
        Expr::Literal(_) | Expr::Unspecified => None,
    }
}

/// Compiles `source`, which may use the variables `declared`. The error is cel-go's text
/// (without upstream's `compilation failed: ` prefix).
pub fn compile(source: &str, declared: &[&str]) -> Result<Expression, String> {
    let program = ENV.compile(source).map_err(|errs| {
        errs.errors
            .iter()
            .map(|e| {
                let line = usize::try_from(e.pos.0).unwrap_or(1).max(1);
                let col = usize::try_from(e.pos.1).unwrap_or(0) + 1;
                let text = source.split('\n').nth(line - 1).unwrap_or("");
                error_at(line, col, text, &e.msg)
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if let Some((id, name)) = undeclared(program.expression(), declared, &mut Vec::new()) {
        let offset = program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        let (line, col, text) = locate(source, offset);
        return Err(error_at(
            line,
            col,
            text,
            &format!("undeclared reference to '{name}' (in container '')"),
        ));
    }
    Ok(Expression {
        source: source.to_string(),
        program: Arc::new(program),
    })
}

/// A JSON value as CEL sees it, as Kubernetes converts objects: integers that fit are `int`,
/// other numbers `double`, objects maps with string keys.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, cel::Value> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A runtime error in cel-go's words where they differ.
fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::Overflow(..) => "integer overflow".into(),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".into(),
        ExecutionError::UndeclaredReference(n) => {
            format!("undeclared reference to '{n}' (in container '')")
        }
        other => other.to_string(),
    }
}

/// The variables of one evaluation.
pub struct Activation {
    vars: Vec<(&'static str, cel::Value)>,
}

impl Activation {
    /// An activation with `vars` (name, value).
    pub fn new(vars: Vec<(&'static str, cel::Value)>) -> Self {
        Activation { vars }
    }

    /// Adds or replaces a variable.
    pub fn set(&mut self, name: &'static str, v: cel::Value) {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, v));
    }

    fn context(&self) -> Context<'_, '_> {
        let mut ctx = Context::with_env(ENV.clone());
        for (n, v) in &self.vars {
            ctx.add_variable_from_value(*n, v.clone());
        }
        ctx
    }
}

impl Expression {
    /// Evaluates the expression.
    pub fn eval(&self, act: &Activation) -> Result<cel::Value, String> {
        self.program
            .execute(&act.context())
            .map_err(|e| describe(&e))
    }

    /// Evaluates an expression that must give a bool.
    pub fn eval_bool(&self, act: &Activation) -> Result<bool, String> {
        match self.eval(act)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!("expected bool, got {}", type_name(&other))),
        }
    }
}

/// The CEL type name of a value.
pub fn type_name(v: &cel::Value) -> &'static str {
    match v {
        cel::Value::List(_) => "list",
        cel::Value::Map(_) => "map",
        cel::Value::Int(_) => "int",
        cel::Value::UInt(_) => "uint",
        cel::Value::Float(_) => "double",
        cel::Value::String(_) => "string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Bool(_) => "bool",
        cel::Value::Null => "null_type",
        _ => "dyn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_checks_and_evaluates() {
        let e = compile(
            "object.spec.replicas + 1 <= params.max && object.metadata.name.startsWith('web')",
            &["object", "params"],
        )
        .unwrap();
        let act = Activation::new(vec![
            (
                "object",
                to_cel(&json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2}})),
            ),
            ("params", to_cel(&json!({"max": 3}))),
        ]);
        assert_eq!(e.eval_bool(&act), Ok(true));
        let all = compile(
            "object.spec.containers.all(c, has(c.image) && c.image != '')",
            &["object"],
        )
        .unwrap();
        let act = Activation::new(vec![(
            "object",
            to_cel(&json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}})),
        )]);
        assert_eq!(all.eval_bool(&act), Ok(false));
        assert_eq!(
            compile("object.x == params.y", &["object"]).unwrap_err(),
            "ERROR: <input>:1:13: undeclared reference to 'params' (in container '')\n | object.x == params.y\n | ............^"
        );
        let err = compile("object.", &["object"]).unwrap_err();
        assert!(err.starts_with("ERROR: <input>:1:"), "{err}");
        assert!(err.contains("\n | object.\n | "), "{err}");
        let missing = compile("object.nope == 1", &["object"]).unwrap();
        assert_eq!(
            missing
                .eval(&Activation::new(vec![("object", to_cel(&json!({})))]))
                .unwrap_err(),
            "no such key: nope"
        );
        let s = compile(
            "'a-b'.split('-').size() == 2 && ['x'].exists(v, v == 'x')",
            &[],
        )
        .unwrap();
        assert_eq!(s.eval_bool(&Activation::new(vec![])), Ok(true));
    }
}
