//! The HTML form of an [`ImprovementReport`]: one self-contained page (inline SVG, no scripts).

use std::fmt::Write;

use crate::report::ImprovementReport;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"))
}

impl ImprovementReport {
    /// The report as one HTML page: the verdict and reasons, the selection score of each
    /// candidate over the run's rollouts with the best so far, the frontier, the test
    /// comparison with its interval, the diff, the candidate tree and the spend per phase.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>improve: {verdict}</title>\
             <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}\
             pre{{background:#f6f6f6;padding:1em;overflow:auto}}.ship{{color:#070}}.hold{{color:#a50}}</style>\
             </head><body><h1>Verdict: <span class=\"{verdict}\">{verdict}</span></h1><ul>",
            verdict = self.verdict
        );
        for reason in &self.reasons {
            let _ = write!(h, "<li>{}</li>", esc(reason));
        }
        let _ = write!(
            h,
            "</ul><p>Run <code>{}</code>, generator <code>{}</code>; the search stopped because {}.</p>",
            self.run,
            esc(&self.generator),
            esc(&self.stopped)
        );
        h.push_str("<h2>Selection score per candidate over rollouts</h2>");
        h.push_str(&self.score_chart());
        let _ = write!(
            h,
            "<h2>Frontier</h2><p>Candidates on the selection Pareto frontier: {}</p>",
            self.frontier
                .iter()
                .map(|c| format!("#{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        h.push_str("<h2>Test comparison</h2>");
        match &self.gate {
            Some(g) => {
                let _ = write!(
                    h,
                    "<p>Baseline {:.3}, winner #{} {:.3}: lift {:+.3}, {:.0}% interval [{:+.3}, {:+.3}] over {} \
                     scenarios ({} paired trials).</p>{}",
                    g.baseline_mean,
                    self.winner,
                    g.candidate_mean,
                    g.lift,
                    g.interval.confidence * 100.0,
                    g.interval.low,
                    g.interval.high,
                    g.scenarios,
                    g.trials,
                    interval_svg(g.interval.low, g.interval.high, g.lift)
                );
            }
            None => h.push_str("<p>No test comparison (see the reasons above).</p>"),
        }
        let _ = write!(
            h,
            "<h2>Winner #{} against the baseline</h2><p>Winner <code>{}</code>, baseline <code>{}</code>.</p><pre>{}</pre>",
            self.winner,
            esc(&self.winner_address),
            esc(&self.baseline_address),
            esc(&self.diff)
        );
        h.push_str(
            "<h2>Candidates</h2><table><tr><th>#</th><th>parents</th><th>changed</th>\
             <th>minibatch (parent → child)</th><th>selection</th><th>accepted</th><th>why</th></tr>",
        );
        for c in &self.candidates {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.id,
                c.parents
                    .iter()
                    .map(|p| format!("#{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                esc(&c.changed.join(", ")),
                opt(c.parent_minibatch_score),
                opt(c.minibatch_score),
                opt(c.selection_mean),
                if c.accepted { "yes" } else { "no" },
                esc(&c.reason)
            );
        }
        h.push_str(
            "</table><h2>Spend</h2><table><tr><th>phase</th><th>rollouts</th><th>reflection calls</th>\
             <th>interrupted</th><th>tokens</th><th>dollars</th><th>calls of unknown tokens</th><th>calls of unknown cost</th></tr>",
        );
        for s in &self.spend {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.phase),
                s.rollouts,
                s.calls,
                s.interrupted,
                s.usage.input_tokens + s.usage.output_tokens,
                s.usage.cost_dollars,
                s.usage.calls_with_unknown_tokens,
                s.usage.calls_with_unknown_cost
            );
        }
        h.push_str("</table>");
        if !self.interrupted.is_empty() {
            // Attempts an earlier stop of the run cut short: charged, and run again.
            h.push_str(
                "<h2>Interrupted attempts</h2><table><tr><th>rollout</th><th>phase</th>\
                 <th>how far</th><th>model calls recorded</th><th>tokens charged</th></tr>",
            );
            for i in &self.interrupted {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&i.key),
                    esc(&i.phase),
                    if i.completed {
                        "finished, not journaled"
                    } else {
                        "stopped midway"
                    },
                    i.usage.calls,
                    i.usage.input_tokens + i.usage.output_tokens
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Each scored candidate as a point (rollouts spent, selection mean), and the best so far
    /// as a step line.
    fn score_chart(&self) -> String {
        let (w, hgt, pad) = (600.0, 240.0, 30.0);
        let max_x = self
            .candidates
            .iter()
            .map(|c| c.rollouts_at)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |r: u64| pad + (r as f64 / max_x) * (w - 2.0 * pad);
        let y = |s: f64| hgt - pad - s * (hgt - 2.0 * pad);
        let mut svg = format!(
            "<svg width=\"{w}\" height=\"{hgt}\" xmlns=\"http://www.w3.org/2000/svg\">\
             <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#999\"/>\
             <text x=\"2\" y=\"{t}\" font-size=\"10\">1.0</text><text x=\"2\" y=\"{b}\" font-size=\"10\">0.0</text>\
             <text x=\"{r}\" y=\"{xl}\" font-size=\"10\" text-anchor=\"end\">{max_x} rollouts</text>",
            b = hgt - pad,
            r = w - pad,
            t = pad + 4.0,
            xl = hgt - 8.0,
        );
        let mut best = f64::NEG_INFINITY;
        let mut steps = Vec::new();
        for c in &self.candidates {
            let Some(score) = c.selection_mean else {
                continue;
            };
            let colour = if self.frontier.contains(&c.id) {
                "#070"
            } else {
                "#36c"
            };
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"><title>#{} {:.3}</title></circle>",
                x(c.rollouts_at),
                y(score),
                c.id,
                score
            );
            if score > best {
                best = score;
                steps.push((c.rollouts_at, score));
            }
        }
        let mut path = String::new();
        for (i, (r, s)) in steps.iter().enumerate() {
            if i > 0 {
                let _ = write!(path, " L{:.1},{:.1}", x(*r), y(steps[i - 1].1));
            }
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(*r),
                y(*s)
            );
        }
        if let Some((_, s)) = steps.last() {
            let _ = write!(path, " L{:.1},{:.1}", x(max_x as u64), y(*s));
        }
        let _ = write!(
            svg,
            "<path d=\"{path}\" fill=\"none\" stroke=\"#c33\"/></svg>"
        );
        svg
    }
}

/// The lift's interval on a [-1, 1] axis, with zero marked.
fn interval_svg(low: f64, high: f64, lift: f64) -> String {
    let x = |v: f64| 20.0 + (v.clamp(-1.0, 1.0) + 1.0) / 2.0 * 360.0;
    format!(
        "<svg width=\"400\" height=\"40\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"20\" y1=\"20\" x2=\"380\" y2=\"20\" stroke=\"#ccc\"/>\
         <line x1=\"{z:.1}\" y1=\"8\" x2=\"{z:.1}\" y2=\"32\" stroke=\"#999\"/>\
         <line x1=\"{l:.1}\" y1=\"20\" x2=\"{h:.1}\" y2=\"20\" stroke=\"#36c\" stroke-width=\"4\"/>\
         <circle cx=\"{m:.1}\" cy=\"20\" r=\"5\" fill=\"#c33\"/></svg>",
        z = x(0.0),
        l = x(low),
        h = x(high),
        m = x(lift)
    )
}
