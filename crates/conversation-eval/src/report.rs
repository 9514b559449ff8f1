//! Reports of a batch: markdown and HTML (per-scenario results, the worst transcripts with the
//! judge's reasons); the JSON report is the [`BatchReport`] itself, serialized.

use std::fmt::Write;

use crate::batch::BatchReport;
use crate::trial::{Speaker, TrialReport, TrialValidity};

fn rate(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

/// The batch's cost: known dollars, and how many calls had no known cost (never counted as 0).
pub(crate) fn cost_line(report: &BatchReport) -> String {
    let u = &report.usage;
    let mut s = format!("${:.4}", u.cost_dollars);
    if u.calls_with_unknown_cost > 0 {
        let _ = write!(s, " + {} calls of unknown cost", u.calls_with_unknown_cost);
    }
    s
}

/// The trials to show as the worst: counted ones by ascending reward, then flagged ones.
fn worst(report: &BatchReport, n: usize) -> Vec<&TrialReport> {
    let mut failed: Vec<&TrialReport> = report
        .trials
        .iter()
        .filter(|t| !t.passed || t.validity != TrialValidity::Valid)
        .collect();
    failed.sort_by(|a, b| {
        (a.validity != TrialValidity::Valid)
            .cmp(&(b.validity != TrialValidity::Valid))
            .then(a.reward.total_cmp(&b.reward))
    });
    failed.truncate(n);
    failed
}

/// The report as markdown: the summary, a table per scenario, and the `worst` lowest-scoring
/// trials with their transcripts and the judge's reasons.
pub fn render_markdown(report: &BatchReport, worst_n: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Conversation eval: {}\n", report.agent_model);
    let _ = writeln!(
        out,
        "- batch run: `{}`\n- pass@1: {}\n- pass^{}: {}\n- cost: {}\n- tokens: {} in, {} out \
         ({} calls of unknown usage)\n- simulator errors {}: {}\n",
        report.run,
        rate(report.pass_at_1),
        report.k,
        rate(report.pass_hat_k),
        cost_line(report),
        report.usage.input_tokens,
        report.usage.output_tokens,
        report.usage.calls_with_unknown_tokens,
        if report.include_simulator_errors {
            "(counted)"
        } else {
            "(excluded from pass rates)"
        },
        report
            .scenarios
            .iter()
            .map(|s| s.simulator_errors)
            .sum::<u32>()
    );
    let _ = writeln!(
        out,
        "| scenario | counted | passed | mean reward | pass^{} | simulator errors | simulator failures | judge failures |",
        report.k
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for s in &report.scenarios {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.scenario,
            s.counted,
            s.passed,
            rate(s.mean_reward),
            rate(s.pass_hat_k),
            s.simulator_errors,
            s.simulator_failures,
            s.judge_failures
        );
    }
    let worst = worst(report, worst_n);
    if !worst.is_empty() {
        out.push_str("\n## Worst trials\n");
    }
    for t in worst {
        let _ = writeln!(
            out,
            "\n### {} #{} — reward {:.3}, {:?}\n\nstop: {}; sessions: agent `{}`, simulator `{}`, judge `{}`\n",
            t.scenario,
            t.trial,
            t.reward,
            t.validity,
            t.stop,
            opt_id(t.sessions.agent),
            opt_id(t.sessions.simulator),
            opt_id(t.sessions.judge)
        );
        for line in t.feedback().lines() {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        for u in &t.transcript {
            let _ = writeln!(
                out,
                "> **{}**: {}  ",
                speaker(u.speaker),
                u.text.replace('\n', " ")
            );
        }
    }
    out
}

fn opt_id(id: Option<agentrt_session_store::SessionId>) -> String {
    id.map_or_else(|| "-".into(), |i| i.to_string())
}

fn speaker(s: Speaker) -> &'static str {
    match s {
        Speaker::User => "user",
        Speaker::Agent => "agent",
        Speaker::Tool => "tool",
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as a standalone HTML page (same content as [`render_markdown`]).
pub fn render_html(report: &BatchReport, worst_n: usize) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Conversation eval</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:\
         collapse}td,th{border:1px solid #ccc;padding:.2em .5em}.user{color:#035}.agent{color:\
         #050}.tool{color:#777}</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>Conversation eval: {}</h1><ul><li>batch run: <code>{}</code></li><li>pass@1: {}</li>\
         <li>pass^{}: {}</li><li>cost: {}</li></ul>",
        esc(&report.agent_model),
        report.run,
        rate(report.pass_at_1),
        report.k,
        rate(report.pass_hat_k),
        esc(&cost_line(report))
    );
    let _ = write!(
        out,
        "<table><tr><th>scenario</th><th>counted</th><th>passed</th><th>mean reward</th>\
         <th>pass^{}</th><th>simulator errors</th><th>simulator failures</th><th>judge failures</th></tr>",
        report.k
    );
    for s in &report.scenarios {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.scenario),
            s.counted,
            s.passed,
            rate(s.mean_reward),
            rate(s.pass_hat_k),
            s.simulator_errors,
            s.simulator_failures,
            s.judge_failures
        );
    }
    out.push_str("</table>");
    for t in worst(report, worst_n) {
        let _ = write!(
            out,
            "<h3>{} #{} — reward {:.3}, {:?}</h3><ul>",
            esc(&t.scenario),
            t.trial,
            t.reward,
            t.validity
        );
        for line in t.feedback().lines() {
            let _ = write!(out, "<li>{}</li>", esc(line));
        }
        out.push_str("</ul>");
        for u in &t.transcript {
            let who = speaker(u.speaker);
            let _ = write!(out, "<p class=\"{who}\"><b>{who}</b>: {}</p>", esc(&u.text));
        }
    }
    out.push_str("</body></html>\n");
    out
}
