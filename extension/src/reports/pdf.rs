//! `pdf` reports: the report's text (its plain table, or its text template's output) set on
//! A4 pages in the standard Courier font, which every PDF reader has (nothing is embedded),
//! with long lines wrapped. Courier's WinAnsi encoding covers Latin-1 and the usual
//! typographic signs; any other character prints as `?`. Pure Rust, with `pdf-writer`.
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const MARGIN: f32 = 42.0;
const FONT_SIZE: f32 = 9.0;
const LEADING: f32 = 11.0;
/// Courier's advance is 600/1000 of the font size.
const CHARS_PER_LINE: usize = ((PAGE_WIDTH - 2.0 * MARGIN) / (FONT_SIZE * 0.6)) as usize;
const LINES_PER_PAGE: usize = ((PAGE_HEIGHT - 2.0 * MARGIN) / LEADING) as usize;

/// `text` as a PDF document.
pub fn pdf(text: &str) -> Vec<u8> {
    let lines = layout(text);
    let mut pages: Vec<&[Vec<u8>]> = lines.chunks(LINES_PER_PAGE).collect();
    if pages.is_empty() {
        pages.push(&[]);
    }
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let font = Ref::new(3);
    let page_ref = |i: usize| Ref::new(4 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(5 + 2 * i as i32);
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages.len()).map(page_ref))
        .count(pages.len() as i32);
    pdf.type1_font(font)
        .base_font(Name(b"Courier"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    for (i, page_lines) in pages.iter().enumerate() {
        let mut page = pdf.page(page_ref(i));
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT))
            .parent(tree)
            .contents(content_ref(i));
        page.resources().fonts().pair(Name(b"F1"), font);
        page.finish();
        let mut content = Content::new();
        content.begin_text();
        content.set_font(Name(b"F1"), FONT_SIZE);
        content.set_leading(LEADING);
        content.next_line(MARGIN, PAGE_HEIGHT - MARGIN - FONT_SIZE);
        for line in page_lines.iter() {
            content.show(Str(line));
            content.next_line_using_leading();
        }
        content.end_text();
        pdf.stream(content_ref(i), &content.finish());
    }
    pdf.finish()
}

/// The lines of `text` as WinAnsi bytes, tabs expanded, wrapped at the page's width.
fn layout(text: &str) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for source in text.lines() {
        let mut line = Vec::new();
        for c in source.chars() {
            if c == '\t' {
                let to = (line.len() / 8 + 1) * 8;
                line.resize(to, b' ');
            } else if !c.is_control() {
                line.push(win_ansi(c));
            }
        }
        if line.is_empty() {
            lines.push(line);
            continue;
        }
        for chunk in line.chunks(CHARS_PER_LINE) {
            lines.push(chunk.to_vec());
        }
    }
    lines
}

/// `c` in the WinAnsi encoding, or `?`.
fn win_ansi(c: char) -> u8 {
    match c as u32 {
        0x20..=0x7e | 0xa0..=0xff => c as u32 as u8,
        _ => match c {
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8a,
            '‹' => 0x8b,
            'Œ' => 0x8c,
            'Ž' => 0x8e,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9a,
            '›' => 0x9b,
            'œ' => 0x9c,
            'ž' => 0x9e,
            'Ÿ' => 0x9f,
            _ => b'?',
        },
    }
}
