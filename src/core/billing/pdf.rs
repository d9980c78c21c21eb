//! An invoice as a PDF (A4, built-in Helvetica): tenant, period, every line, the total.

use printpdf::{BuiltinFont, IndirectFontRef, Mm, PdfDocument, PdfLayerReference};

use super::{Invoice, money};
use crate::time;

/// Why a PDF could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the invoice PDF: {0}")]
pub struct PdfError(String);

const LINES_PER_PAGE: usize = 38;
const TOP: f32 = 280.0;
const LINE_HEIGHT: f32 = 6.0;

/// Built-in PDF fonts speak WinAnsi: keep printable ASCII, replace the rest.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn cut(text: &str, width: usize) -> String {
    let text = printable(text);
    if text.chars().count() <= width {
        text
    } else {
        format!("{}...", text.chars().take(width - 3).collect::<String>())
    }
}

pub fn render(invoice: &Invoice, tenant: &str, status: &str) -> Result<Vec<u8>, PdfError> {
    let (document, page, layer) = PdfDocument::new(
        format!("Invoice {}", invoice.name),
        Mm(210.0),
        Mm(297.0),
        "invoice",
    );
    let regular = document
        .add_builtin_font(BuiltinFont::Helvetica)
        .map_err(|e| PdfError(e.to_string()))?;
    let bold = document
        .add_builtin_font(BuiltinFont::HelveticaBold)
        .map_err(|e| PdfError(e.to_string()))?;

    let mut rows: Vec<(String, String, bool)> = vec![
        (format!("Invoice {}", invoice.name), String::new(), true),
        (format!("Tenant: {tenant}"), String::new(), false),
        (format!("Plan: {}", invoice.plan), String::new(), false),
        (
            format!(
                "Period: {} to {}",
                time::format_rfc3339(invoice.period_start),
                time::format_rfc3339(invoice.period_end)
            ),
            String::new(),
            false,
        ),
        (
            format!(
                "Issued: {}   Due: {}   Status: {status}",
                time::format_rfc3339(invoice.issued_at),
                time::format_rfc3339(invoice.due_at)
            ),
            String::new(),
            false,
        ),
        (String::new(), String::new(), false),
        ("Line".into(), "Amount".into(), true),
    ];
    for line in &invoice.lines {
        let detail = if line.quantity != 0 {
            format!(
                "{} - {} x {}",
                line.description,
                line.quantity,
                money(line.unit_price, &invoice.currency)
            )
        } else {
            line.description.clone()
        };
        rows.push((
            cut(&detail, 90),
            money(line.amount, &invoice.currency),
            false,
        ));
    }
    rows.push((String::new(), String::new(), false));
    rows.push((
        "Total".into(),
        money(invoice.total, &invoice.currency),
        true,
    ));

    let mut layer: PdfLayerReference = document.get_page(page).get_layer(layer);
    for (index, (text, amount, strong)) in rows.iter().enumerate() {
        if index > 0 && index % LINES_PER_PAGE == 0 {
            let (next_page, next_layer) = document.add_page(Mm(210.0), Mm(297.0), "invoice");
            layer = document.get_page(next_page).get_layer(next_layer);
        }
        let y = TOP - (index % LINES_PER_PAGE) as f32 * LINE_HEIGHT;
        let font: &IndirectFontRef = if *strong { &bold } else { &regular };
        layer.use_text(printable(text), 10.0, Mm(15.0), Mm(y), font);
        if !amount.is_empty() {
            layer.use_text(printable(amount), 10.0, Mm(160.0), Mm(y), font);
        }
    }
    document
        .save_to_bytes()
        .map_err(|e| PdfError(e.to_string()))
}
