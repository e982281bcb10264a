//! FunctionBench's `chameleon`: renders the "big table" page, an HTML table of `rows` ×
//! `cols` cells (default 200 × 20), with a template engine (minijinja, in place of the
//! original's Chameleon page templates).
//!
//! The template is parsed and compiled during init and held in the engine's environment.
//! Like the original, every row holds the values `0..cols` and each cell shows its value
//! plus one in a `<span>` whose class names the column; the page's `title` (default
//! "Big table") is HTML-escaped. The page is answered as its size and hash, with the count
//! of rendered cells: `{"rows", "cols", "cells", "html": {"bytes", "crc32"}}`.

use minijinja::{Environment, context};
use reap_function::{Value, digest, json, serve, str_field, u64_field};

/// The page template. Its name ends in `.html`, so the engine escapes values for HTML.
const BIGTABLE: &str = r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml">
<head><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<table>
{%- for row in table %}
<tr class="{{ loop.cycle("odd", "even") }}">
{%- for c in row %}
<td><span class="column-{{ c + 1 }}">{{ c + 1 }}</span></td>
{%- endfor %}
</tr>
{%- endfor %}
</table>
</body>
</html>
"#;
const TEMPLATE_NAME: &str = "bigtable.html";

const MAX_ROWS: u64 = 100_000;
const MAX_COLS: u64 = 1_000;
/// Bound on `rows * cols`, so that one request stays around a second.
const MAX_CELLS: u64 = 2_000_000;

/// The state a warm instance holds: the engine with the compiled template.
struct Chameleon {
    env: Environment<'static>,
}

impl Chameleon {
    fn new() -> Self {
        let mut env = Environment::new();
        env.add_template(TEMPLATE_NAME, BIGTABLE)
            .expect("the page template compiles");
        Chameleon { env }
    }

    fn render(&self, title: &str, rows: usize, cols: usize) -> Result<String, String> {
        let row: Vec<usize> = (0..cols).collect();
        let table = vec![row; rows];
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| e.to_string())?;
        template
            .render(context! { title, table })
            .map_err(|e| format!("rendering failed: {e}"))
    }

    fn answer(&self, request: &Value) -> Result<Value, String> {
        let rows = u64_field(request, "rows", 200, MAX_ROWS)?;
        let cols = u64_field(request, "cols", 20, MAX_COLS)?;
        let title = str_field(request, "title", "Big table")?;
        if rows * cols > MAX_CELLS {
            return Err(format!("`rows` × `cols` is at most {MAX_CELLS}"));
        }
        let html = self.render(title, rows as usize, cols as usize)?;
        Ok(json!({
            "rows": rows,
            "cols": cols,
            "cells": html.matches("<td>").count(),
            "html": digest(html.as_bytes()),
        }))
    }
}

fn main() {
    let chameleon = Chameleon::new();
    serve(|request| chameleon.answer(request));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_rows_times_cols_cells() {
        let html = Chameleon::new().render("t", 7, 5).unwrap();
        assert_eq!(html.matches("<tr ").count(), 7);
        assert_eq!(html.matches("<td>").count(), 35);
        assert_eq!(
            html.matches(r#"<span class="column-5">5</span>"#).count(),
            7
        );
        assert!(!html.contains("column-6"));
        assert_eq!(html.matches(r#"<tr class="odd">"#).count(), 4);
    }

    #[test]
    fn title_is_html_escaped() {
        let html = Chameleon::new().render("<b>&", 1, 1).unwrap();
        assert!(html.contains("<title>&lt;b&gt;&amp;</title>"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn empty_table_renders() {
        let html = Chameleon::new().render("t", 0, 3).unwrap();
        assert!(html.contains("<table>\n</table>"));
    }

    #[test]
    fn answers_defaults_and_rejects_bad_requests() {
        let c = Chameleon::new();
        let a = c.answer(&json!({})).unwrap();
        assert_eq!(
            (a["rows"].clone(), a["cols"].clone(), a["cells"].clone()),
            (json!(200), json!(20), json!(4000))
        );
        assert_eq!(a, c.answer(&json!({})).unwrap());
        assert!(c.answer(&json!({"rows": "many"})).is_err());
        assert!(c.answer(&json!({"title": 3})).is_err());
        assert!(
            c.answer(&json!({"rows": MAX_ROWS, "cols": MAX_COLS}))
                .is_err()
        );
    }
}
