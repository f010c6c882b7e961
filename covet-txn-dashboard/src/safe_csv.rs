//! CSV downloads that a spreadsheet opens as data: a cell that would start
//! with `=`, `+`, `-`, `@`, a tab or a carriage return (a formula, for
//! Excel, LibreOffice and Google Sheets) is prefixed with `'`, as OWASP
//! recommends, and an export with no rows still has its header row.
//!
//! The monitor writes the CSV; this module rewrites it cell by cell, so the
//! columns stay the monitor's.

use csv::{ReaderBuilder, WriterBuilder};

/// The header of `history.csv`, for an export with no sample yet. A test
/// checks it against the header of a non-empty export.
pub(crate) const HISTORY_HEADER: &str = "taken_at_ms,started,committed,rolled_back,failed,retries,deadlocks,serialization_failures,timeouts,p50_ms,p95_ms,p99_ms,active,pool_size,pool_idle,health\n";
/// The header of `alerts.csv`, for an export with no alert.
pub(crate) const ALERTS_HEADER: &str = "at_ms,level,rule,function,message,value,threshold\n";

/// `csv` with every formula-looking cell neutralised, or `empty_header`
/// when it has no line at all.
pub(crate) fn neutralise(csv: &str, empty_header: &str) -> Result<String, csv::Error> {
    if csv.trim().is_empty() {
        return Ok(empty_header.to_owned());
    }
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv.as_bytes());
    let mut writer = WriterBuilder::new().flexible(true).from_writer(Vec::new());
    let mut safe = csv::StringRecord::new();
    for record in reader.records() {
        let record = record?;
        safe.clear();
        for cell in &record {
            if is_formula(cell) {
                safe.push_field(&format!("'{cell}"));
            } else {
                safe.push_field(cell);
            }
        }
        writer.write_record(&safe)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| csv::Error::from(error.into_error()))?;
    // Every cell came from a `&str`, and quoting adds only ASCII.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether a spreadsheet would read `cell` as a formula. A plain number
/// (`-1.5`) is left alone: it is data, and quoting it would turn it into
/// text.
fn is_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        let csv = "function,value\n=HYPERLINK(\"x\"),-1.5\n+1+2,@SUM(A1)\n\"\tcmd\",\"\rx\"\n-2+3,plain\n";
        let safe = neutralise(csv, "").expect("valid CSV");
        let rows: Vec<Vec<String>> = ReaderBuilder::new()
            .has_headers(false)
            .from_reader(safe.as_bytes())
            .records()
            .map(|row| row.expect("a row").iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(rows[0], ["function", "value"]);
        assert_eq!(rows[1], ["'=HYPERLINK(\"x\")", "-1.5"]);
        assert_eq!(rows[2], ["'+1+2", "'@SUM(A1)"]);
        assert_eq!(rows[3], ["'\tcmd", "'\rx"]);
        assert_eq!(rows[4], ["'-2+3", "plain"]);
    }

    #[test]
    fn an_empty_export_is_its_header() {
        assert_eq!(neutralise("", ALERTS_HEADER).expect("empty"), ALERTS_HEADER);
    }
}
