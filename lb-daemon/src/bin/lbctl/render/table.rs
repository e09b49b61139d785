//! Aligned text tables whose cells may carry colours.

/// Characters a terminal shows of `s`: ANSI escape sequences (colours) take no room.
pub fn visible_width(s: &str) -> usize {
    visible_chars(s).count()
}

/// The characters of `s` outside ANSI escape sequences (an escape runs from `ESC` to the first
/// ASCII letter).
pub fn visible_chars(s: &str) -> impl Iterator<Item = char> + '_ {
    let mut escape = false;
    s.chars().filter(move |&c| {
        if escape {
            escape = !c.is_ascii_alphabetic();
            false
        } else if c == '\x1b' {
            escape = true;
            false
        } else {
            true
        }
    })
}

/// Left-aligned columns (right-aligned where `right[i]`), two spaces apart, each line after
/// `indent`; cells may be coloured (see [`super::Paint`]).
pub fn table(rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| visible_width(c)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(visible_width(cell));
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::strip;
    use crate::render::Paint;

    fn cells(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tables_align() {
        let rows = vec![cells(&["POOL", "N"]), cells(&["pool-a", "1234"]), cells(&["b", "5"])];
        assert_eq!(table(&rows, &[false, true], ""), "POOL       N\npool-a  1234\nb          5\n");
    }

    #[test]
    fn coloured_cells_align_like_plain_ones() {
        let on = Paint::ON;
        assert_eq!(visible_width(&on.bold("web")), 3);
        let rows =
            vec![cells(&["STATE", "N"]), vec![on.green("up"), "1".into()], vec![on.red("DOWN"), "22".into()]];
        let plain =
            table(&[cells(&["STATE", "N"]), cells(&["up", "1"]), cells(&["DOWN", "22"])], &[false, true], "");
        assert_eq!(strip(&table(&rows, &[false, true], "")), plain);
    }
}
