//! The results page: `index.html` beside the images it shows, one row per input with the
//! colourised label, the output and the real image when there is one (the reference's
//! `util/html.py` page). Links are relative, so the page opens from disk with no server.
use std::fmt::Write as _;
use std::path::Path;

use crate::{Error, Result};

/// One row: a name and one image (a path relative to the page) per column, or none.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub cells: Vec<Option<String>>,
}

/// A page of rows under column headings.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsPage {
    pub title: String,
    /// Lines under the title (checkpoint, options, ...).
    pub notes: Vec<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
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

/// A relative path as a URL path: each segment percent-encoded, `/` between them.
fn href(rel: &str) -> String {
    let mut out = String::new();
    for (i, seg) in rel.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

impl ResultsPage {
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let t = escape(&self.title);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n<style>\n\
             body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}\n\
             table {{ border-collapse: collapse; }}\n\
             th, td {{ padding: 4px 8px; text-align: center; vertical-align: top; }}\n\
             td img {{ max-width: 384px; image-rendering: pixelated; display: block; }}\n\
             td.name {{ text-align: left; font-family: monospace; }}\n\
             .missing {{ color: #999; }}\n\
             </style>\n</head>\n<body>\n<h1>{t}</h1>\n"
        );
        for n in &self.notes {
            let _ = writeln!(h, "<p>{}</p>", escape(n));
        }
        h.push_str("<table>\n<tr><th>name</th>");
        for c in &self.columns {
            let _ = write!(h, "<th>{}</th>", escape(c));
        }
        h.push_str("</tr>\n");
        for r in &self.rows {
            let _ = write!(h, "<tr><td class=\"name\">{}</td>", escape(&r.name));
            for cell in &r.cells {
                match cell {
                    Some(p) => {
                        let u = escape(&href(p));
                        let _ = write!(h, "<td><a href=\"{u}\"><img src=\"{u}\" alt=\"{}\"></a></td>", escape(p));
                    }
                    None => h.push_str("<td class=\"missing\">-</td>"),
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n</body>\n</html>\n");
        h
    }

    /// Writes `<dir>/index.html` (through a temporary file and a rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("index.html");
        let tmp = dir.join(".index.html.tmp");
        let err =
            |e: std::io::Error| Error::File { path: path.clone(), detail: format!("writing the results page: {e}") };
        std::fs::write(&tmp, self.to_html()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// The page of a training run's `samples/` folder: one row per sample grid (`iter_*.png`,
/// label | generated | real), newest first. Called after each grid is written.
pub fn write_samples_page(samples_dir: &Path, run_name: &str) -> Result<()> {
    let rd = std::fs::read_dir(samples_dir).map_err(|e| Error::File {
        path: samples_dir.to_path_buf(),
        detail: format!("listing the sample grids: {e}"),
    })?;
    let mut grids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("iter_") && n.ends_with(".png"))
        .collect();
    grids.sort();
    grids.reverse();
    let rows = grids
        .into_iter()
        .map(|g| {
            let it = g.trim_start_matches("iter_").trim_end_matches(".png").trim_start_matches('0');
            Row { name: format!("iteration {}", if it.is_empty() { "0" } else { it }), cells: vec![Some(g)] }
        })
        .collect();
    ResultsPage {
        title: format!("{run_name}: training samples"),
        notes: vec!["Each grid: one sample per row; colourised label | generated | real.".into()],
        columns: vec!["label | generated | real".into()],
        rows,
    }
    .write(samples_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_names_and_links_relative_paths() {
        let page = ResultsPage {
            title: "a <b> & c".into(),
            notes: vec![],
            columns: vec!["label".into(), "output".into()],
            rows: vec![Row { name: "x\"y".into(), cells: vec![Some("label/my img#1.png".into()), None] }],
        };
        let h = page.to_html();
        assert!(h.contains("<title>a &lt;b&gt; &amp; c</title>"), "{h}");
        assert!(h.contains("<img src=\"label/my%20img%231.png\""), "{h}");
        assert!(h.contains("<td class=\"name\">x&quot;y</td>"), "{h}");
        assert!(h.contains("<td class=\"missing\">-</td>"), "{h}");
    }

    #[test]
    fn samples_page_lists_grids_newest_first() {
        let d = tempfile::tempdir().unwrap();
        for n in ["iter_00000002.png", "iter_00000010.png", "notes.txt"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        write_samples_page(d.path(), "run").unwrap();
        let h = std::fs::read_to_string(d.path().join("index.html")).unwrap();
        let (a, b) = (h.find("iter_00000010.png").unwrap(), h.find("iter_00000002.png").unwrap());
        assert!(a < b, "{h}");
        assert!(h.contains("iteration 10") && h.contains("iteration 2"), "{h}");
        assert!(!h.contains("notes.txt"));
    }
}
