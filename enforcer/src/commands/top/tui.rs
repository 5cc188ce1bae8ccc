//! `enforcer top` on a terminal: raw mode and the alternate screen (ratatui over crossterm),
//! a pressure gauge, the sockets table cut to the window, keys to sort and quit. The terminal
//! is restored however this ends: a key, an error, or a panic (ratatui's hook).
use std::time::Instant;

use anyhow::{Context, Result};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Gauge, Paragraph, Row as TableRow, Table},
};

use super::{COLUMNS, Observer, TopArgs, TopSort, View, cells, headline};
use crate::model::units::human_bytes;

/// Leaves raw mode and the alternate screen when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    Sort(TopSort),
    None,
}

fn action(code: KeyCode, modifiers: KeyModifiers) -> Action {
    match code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        // Raw mode turns Ctrl-C into a key instead of a signal.
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('c') => Action::Sort(TopSort::Charged),
        KeyCode::Char('s') => Action::Sort(TopSort::SendQueue),
        KeyCode::Char('t') => Action::Sort(TopSort::Stalled),
        KeyCode::Char('d') => Action::Sort(TopSort::Drain),
        KeyCode::Char('a') => Action::Sort(TopSort::Age),
        _ => Action::None,
    }
}

pub fn run(observer: &mut Observer, args: &TopArgs) -> Result<()> {
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    let (mut sort, mut reverse) = (args.sort, false);
    let mut view = observer.view()?;
    let mut refreshed = Instant::now();
    let mut rounds = 1;
    loop {
        view.sort(sort, reverse);
        terminal.draw(|f| draw(f, &view, sort, reverse, args.limit)).context("drawing")?;
        let wait = args.interval.saturating_sub(refreshed.elapsed());
        if event::poll(wait).context("reading the terminal")? {
            if let Event::Key(k) = event::read().context("reading the terminal")?
                && k.kind == KeyEventKind::Press
            {
                match action(k.code, k.modifiers) {
                    Action::Quit => return Ok(()),
                    Action::Sort(key) => {
                        // The same key again reverses the order, as in htop.
                        reverse = key == sort && !reverse;
                        sort = key;
                    }
                    Action::None => {}
                }
            }
            // A key or a resize: redraw now, refresh on schedule.
            continue;
        }
        if args.iterations.is_some_and(|n| rounds >= n) {
            return Ok(());
        }
        view = observer.view()?;
        refreshed = Instant::now();
        rounds += 1;
    }
}

fn draw(f: &mut Frame, view: &View, sort: TopSort, reverse: bool, limit: Option<usize>) {
    let [head, gauge, table, help] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(2), Constraint::Length(1)])
            .areas(f.area());
    f.render_widget(Paragraph::new(headline(view)), head);

    let ratio = if view.threshold == 0 { 1.0 } else { (view.pressure as f64 / view.threshold as f64).min(1.0) };
    let colour = if view.over { Color::Red } else { Color::Green };
    f.render_widget(
        Gauge::default().gauge_style(Style::default().fg(colour)).ratio(ratio).label(format!(
            "{} / {}",
            human_bytes(view.pressure),
            human_bytes(view.threshold)
        )),
        gauge,
    );

    let header = TableRow::new(COLUMNS.iter().map(|(title, key)| {
        let mark = match key {
            Some(k) if *k == sort => {
                if reverse {
                    "▲"
                } else {
                    "▼"
                }
            }
            _ => "",
        };
        Cell::from(format!("{title}{mark}"))
    }))
    .style(Style::default().add_modifier(Modifier::REVERSED));
    // The window decides how many rows fit (the header takes one); --limit may say fewer.
    let fits = usize::from(table.height.saturating_sub(1));
    let rows = view.sockets.iter().take(limit.unwrap_or(fits).min(fits)).map(|r| {
        let style = if r.chosen.is_some() { Style::default().fg(Color::Red) } else { Style::default() };
        TableRow::new(cells(r).map(Cell::from)).style(style)
    });
    let widths = [
        Constraint::Min(15),
        Constraint::Min(15),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(19),
        Constraint::Fill(1),
    ];
    f.render_widget(Table::new(rows, widths).header(header).block(Block::default()), table);

    let hidden = view.sockets.len().saturating_sub(fits);
    let more = if hidden > 0 { format!("  ({hidden} more below)") } else { String::new() };
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "q quit  c charged  s send-q  t stalled  d drain  a age (again: reverse){more}"
        )))
        .style(Style::default().add_modifier(Modifier::DIM)),
        help,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(action(KeyCode::Char('q'), KeyModifiers::NONE), Action::Quit);
        assert_eq!(action(KeyCode::Esc, KeyModifiers::NONE), Action::Quit);
        assert_eq!(action(KeyCode::Char('c'), KeyModifiers::CONTROL), Action::Quit);
        assert_eq!(action(KeyCode::Char('c'), KeyModifiers::NONE), Action::Sort(TopSort::Charged));
        assert_eq!(action(KeyCode::Char('t'), KeyModifiers::NONE), Action::Sort(TopSort::Stalled));
        assert_eq!(action(KeyCode::Char('x'), KeyModifiers::NONE), Action::None);
    }

    #[test]
    fn draws_into_a_small_window() {
        use ratatui::{Terminal, backend::TestBackend};
        let view = View {
            pressure: 3 << 20,
            threshold: 4 << 20,
            source: "tracked",
            over: false,
            dry_run: false,
            sockets: vec![],
        };
        let mut t = Terminal::new(TestBackend::new(140, 6)).expect("terminal");
        t.draw(|f| draw(f, &view, TopSort::Charged, false, None)).expect("draw");
        let screen: String = t.backend().buffer().content().iter().map(|c| c.symbol()).collect();
        assert!(screen.contains("pressure 3.0MiB under threshold 4.0MiB"), "{screen}");
        assert!(screen.contains("CHARGED▼") && screen.contains("q quit"), "{screen}");
    }
}
