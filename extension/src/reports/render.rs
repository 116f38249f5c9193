//! Rendering a report's rows: `csv` (as `COPY ... CSV HEADER` writes it), `json` (an array
//! of row objects), and `text` and `html`, as a plain table or through a minijinja
//! template. Pure Rust: the rows come in as text cells (csv, text, html) or as JSON objects
//! (json, templates), read by `generate`.
use serde_json::Value;

/// A CSV document, written as `COPY ... TO ... (FORMAT csv, HEADER)` does: fields that
/// hold the delimiter, a quote, a carriage return or a line feed are quoted (quotes
/// doubled), an empty string is `""`, NULL is nothing.
#[derive(Default)]
pub struct Csv {
    pub out: Vec<u8>,
}

impl Csv {
    pub fn row<'a>(&mut self, cells: impl IntoIterator<Item = Option<&'a str>>) {
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            match cell {
                None => {}
                Some(s)
                    if s.is_empty()
                        || s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) =>
                {
                    self.out.push(b'"');
                    for b in s.bytes() {
                        if b == b'"' {
                            self.out.push(b'"');
                        }
                        self.out.push(b);
                    }
                    self.out.push(b'"');
                }
                Some(s) => self.out.extend_from_slice(s.as_bytes()),
            }
        }
        self.out.push(b'\n');
    }
}

/// A plain text table: a header, a rule, one line per row, columns padded to their widest
/// cell (in characters) and separated by ` | `; NULL shows as nothing.
pub fn text_table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_deref().map_or(0, |s| s.chars().count()));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            s.push_str(cell);
            s.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut columns.iter().map(String::as_str));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join("-+-"));
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(|c| c.as_deref().unwrap_or(""))));
    }
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// `s` with `&`, `<`, `>`, `"` and `'` escaped for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A plain HTML document with the rows as a table.
pub fn html_table(title: &str, columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\n<table>\n<thead><tr>",
        html_escape(title)
    );
    for c in columns {
        out.push_str(&format!("<th>{}</th>", html_escape(c)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!(
                "<td>{}</td>",
                html_escape(cell.as_deref().unwrap_or(""))
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</body></html>\n");
    out
}

/// Check a template's syntax (when a report is defined): the error, if any.
pub fn check_template(source: &str) -> Result<(), String> {
    let mut env = environment();
    env.add_template("report", source)
        .map(|_| ())
        .map_err(describe)
}

/// Render `source` with `rows` (JSON objects, one per row), the job's `params` and the
/// report's name. HTML templates escape what they print.
pub fn template(
    source: &str,
    html: bool,
    report: &str,
    rows: Vec<Value>,
    params: &Value,
) -> Result<String, String> {
    let mut env = environment();
    let name = if html { "report.html" } else { "report.txt" };
    env.add_template(name, source).map_err(describe)?;
    let template = env.get_template(name).map_err(describe)?;
    template
        .render(minijinja::context! {
            report => report,
            rows => rows,
            params => params,
        })
        .map_err(describe)
}

/// How much work one rendering may do (minijinja's fuel: about one unit per instruction).
/// Rendering runs outside the query, so the statement timeout cannot stop it: a template
/// that loops over its rows in nested loops runs out of fuel instead of holding its runner.
const FUEL: u64 = 200_000_000;

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // A template names what it uses: a misspelt column is an error, not an empty cell.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

fn describe(e: minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn csv_quotes_as_copy_does() {
        let mut csv = Csv::default();
        csv.row([Some("id"), Some("name")]);
        csv.row([Some("1"), Some("plain")]);
        csv.row([Some("2"), Some("a,b")]);
        csv.row([Some("3"), Some("say \"hi\"")]);
        csv.row([Some("4"), Some("two\nlines")]);
        csv.row([Some("5"), Some("")]);
        csv.row([Some("6"), None]);
        assert_eq!(
            String::from_utf8(csv.out).unwrap(),
            "id,name\n1,plain\n2,\"a,b\"\n3,\"say \"\"hi\"\"\"\n4,\"two\nlines\"\n5,\"\"\n6,\n"
        );
    }

    #[test]
    fn text_tables_align_columns() {
        let t = text_table(
            &["id".into(), "customer".into()],
            &[
                vec![Some("1".into()), Some("Müller".into())],
                vec![Some("10".into()), None],
            ],
        );
        assert_eq!(
            t,
            "id | customer\n---+---------\n1  | Müller\n10 |\n(2 rows)\n"
        );
    }

    #[test]
    fn html_escapes_cells() {
        let h = html_table("<r>", &["a".into()], &[vec![Some("<b>&".into())]]);
        assert!(h.contains("<td>&lt;b&gt;&amp;</td>"), "{h}");
        assert!(h.contains("<title>&lt;r&gt;</title>"), "{h}");
    }

    #[test]
    fn templates_render_rows_and_fail_clearly() {
        let rows = vec![serde_json::json!({"no": 1, "total": 9.5})];
        let out = template(
            "{% for r in rows %}#{{ r.no }}: {{ r.total }}{% endfor %} for {{ params.customer }}",
            false,
            "invoice",
            rows.clone(),
            &serde_json::json!({"customer": "ACME"}),
        )
        .unwrap();
        assert_eq!(out, "#1: 9.5 for ACME");
        let html = template(
            "{{ params.c }}",
            true,
            "x",
            vec![],
            &serde_json::json!({"c": "<i>"}),
        )
        .unwrap();
        assert_eq!(html, "&lt;i&gt;");
        assert!(check_template("{% for r in rows %}").is_err());
        let missing =
            template("{{ r.nope }}", false, "x", vec![], &serde_json::json!({})).unwrap_err();
        assert!(missing.contains("undefined"), "{missing}");
    }
}
