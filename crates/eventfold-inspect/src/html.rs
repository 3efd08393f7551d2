//! The pages as server-rendered HTML. Every text from the store or the broker goes
//! through [`escape`].

use std::fmt::Write as _;

use axum::http::StatusCode;

use crate::pages::{
    DeadLettersPage, EventRow, FollowersPage, LogPage, RelayPage, StreamPage, StreamsPage,
};
use crate::Shared;

/// `text` safe inside HTML text and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// `text` as one percent-encoded URL path segment or query value.
pub(crate) fn url_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn layout(title: &str, active: &str, body: &str) -> String {
    let nav: String = [
        ("/streams", "Streams"),
        ("/log", "Log"),
        ("/followers", "Followers"),
        ("/relay", "Relay"),
        ("/dead-letters", "Dead letters"),
        ("/metrics", "Metrics"),
    ]
    .iter()
    .map(|(href, label)| {
        let class = if *href == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{class}>{label}</a>")
    })
    .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · eventfold inspect</title>\
         <link rel=\"stylesheet\" href=\"/assets/inspect.css\">\
         <script src=\"/assets/inspect.js\" defer></script></head>\
         <body><header><strong>eventfold inspect</strong><nav>{nav}</nav></header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title),
    )
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> String {
    layout(
        &format!("Error {}", status.as_u16()),
        "",
        &format!("<p class=\"error\">{}</p>", escape(message)),
    )
}

fn json_text(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn payload_cell(row: &EventRow) -> String {
    match (&row.payload, &row.undecodable) {
        (Some(json), _) => format!("<pre class=\"payload\">{}</pre>", escape(&json_text(json))),
        (None, Some(why)) => format!(
            "<span class=\"undecodable\">undecodable: {}</span>",
            escape(why)
        ),
        (None, None) => String::new(),
    }
}

fn stream_link(stream_id: &str) -> String {
    format!(
        "<a class=\"stream\" href=\"/streams/{}\">{}</a>",
        url_path(stream_id),
        escape(stream_id)
    )
}

fn events_table(rows: &[EventRow], with_ids: bool, table_id: &str, tail: Option<&str>) -> String {
    let mut html = format!("<table id=\"{table_id}\"");
    if let Some(tail) = tail {
        let _ = write!(html, " data-tail=\"{}\"", escape(tail));
    }
    html.push_str("><thead><tr>");
    if with_ids {
        html.push_str("<th>id</th>");
    }
    html.push_str("<th>stream</th><th>version</th><th>topic</th><th>time</th><th>size</th><th>payload</th></tr></thead><tbody>");
    for row in rows {
        html.push_str("<tr>");
        if let Some(id) = row.id.filter(|_| with_ids) {
            let _ = write!(html, "<td>{id}</td>");
        }
        let _ = write!(
            html,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            stream_link(&row.stream_id),
            row.version,
            escape(&row.topic),
            escape(&row.time),
            row.size,
            payload_cell(row)
        );
    }
    html.push_str("</tbody></table>");
    html
}

pub(crate) fn streams_page(_: &Shared, page: &StreamsPage) -> String {
    let kind = page.aggregate_type.as_deref().unwrap_or_default();
    let mut body = format!(
        "<form method=\"get\" action=\"/streams\" class=\"search\">\
         <label>Stream id <input name=\"id\" id=\"stream-id\"></label> <button>Open</button></form>\
         <form method=\"get\" action=\"/streams\" class=\"search\">\
         <label>Aggregate type <input name=\"type\" id=\"aggregate-type\" value=\"{}\"></label> \
         <button>Find</button></form>",
        escape(kind)
    );
    if !page.registered_types.is_empty() {
        let types: Vec<String> = page
            .registered_types
            .iter()
            .map(|t| {
                format!(
                    "<a href=\"/streams?type={}\">{}</a>",
                    url_path(t),
                    escape(t)
                )
            })
            .collect();
        let _ = write!(
            body,
            "<p>Registered (state at version N): {}</p>",
            types.join(", ")
        );
    }
    if page.aggregate_type.is_some() {
        let _ = write!(
            body,
            "<p>{} streams of {} with events among the notifications read",
            page.streams.len(),
            escape(kind)
        );
        if let Some(from) = page.scanned_from {
            let _ = write!(body, " (ids from {from} up)");
        }
        body.push_str(".</p><table id=\"streams\"><thead><tr><th>stream</th><th>last topic</th><th>last id</th></tr></thead><tbody>");
        for s in &page.streams {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                stream_link(&s.stream_id),
                escape(&s.last_topic),
                s.last_id
            );
        }
        body.push_str("</tbody></table>");
        if let Some(before) = page.next_before {
            let _ = write!(
                body,
                "<p><a class=\"older\" href=\"/streams?type={}&amp;before={before}\">older</a></p>",
                url_path(kind)
            );
        }
    }
    layout("Streams", "/streams", &body)
}

pub(crate) fn stream_page(_: &Shared, page: &StreamPage) -> String {
    let id = url_path(&page.stream_id);
    let mut body = format!(
        "<p>Aggregate type <strong>{}</strong>, last version <strong>{}</strong>. \
         <a href=\"/api/streams/{id}\">JSON</a></p>",
        escape(&page.aggregate_type),
        page.last_version
    );
    if page.state_available {
        let at = page.state.as_ref().map_or(page.last_version, |s| s.version);
        let _ = write!(
            body,
            "<form method=\"get\" action=\"/streams/{id}\" class=\"search\">\
             <label>State at version <input name=\"at\" id=\"state-at\" type=\"number\" min=\"1\" value=\"{at}\"></label> \
             <button>Fold</button></form>"
        );
    }
    if let Some(state) = &page.state {
        let _ = write!(
            body,
            "<h2>State at version {}</h2><pre id=\"state\" class=\"payload\">{}</pre>",
            state.version,
            escape(&json_text(&state.state))
        );
    }
    body.push_str("<h2>Events (newest first)</h2>");
    body.push_str(&events_table(&page.events, false, "events", None));
    if let Some(before) = page.next_before {
        let _ = write!(
            body,
            "<p><a class=\"older\" href=\"/streams/{id}?before={before}\">older</a></p>"
        );
    }
    body.push_str("<h2>Snapshots (newest first)</h2>");
    if page.snapshots.is_empty() {
        body.push_str("<p>none</p>");
    } else {
        body.push_str(&events_table(&page.snapshots, false, "snapshots", None));
    }
    layout(&format!("Stream {}", page.stream_id), "/streams", &body)
}

pub(crate) fn log_page(_: &Shared, page: &LogPage) -> String {
    let topics = page.topics.join(",");
    let topic_query = if topics.is_empty() {
        String::new()
    } else {
        format!("&topic={}", url_path(&topics))
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/log\" class=\"search\">\
         <label>Topics <input name=\"topic\" id=\"topic\" value=\"{}\" placeholder=\"World.Created,World.SomethingHappened\"></label> \
         <button>Filter</button></form>\
         <p>Head: <strong id=\"head\">{}</strong>. <span id=\"tail-status\">Live tail: connecting…</span></p>",
        escape(&topics),
        page.head
    );
    let tail = format!("/api/log/tail?after={}{topic_query}", page.head);
    // Only the first page tails: an older page stays as it is.
    let live = page
        .notifications
        .first()
        .is_none_or(|n| n.id == Some(page.head));
    body.push_str(&events_table(
        &page.notifications,
        true,
        "log",
        live.then_some(tail.as_str()),
    ));
    if let Some(before) = page.next_before {
        let _ = write!(
            body,
            "<p><a class=\"older\" href=\"/log?before={before}{}\">older</a></p>",
            escape(&topic_query)
        );
    }
    layout("Log", "/log", &body)
}

pub(crate) fn followers_page(_: &Shared, page: &FollowersPage) -> String {
    let mut body = format!(
        "<p>Head: <strong>{}</strong>.</p><table id=\"followers\"><thead><tr><th>follower</th>\
         <th>position</th><th>lag (records)</th><th>lag (seconds)</th><th>state</th></tr></thead><tbody>",
        page.head
    );
    for f in &page.followers {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td class=\"state\">{}</td></tr>",
            escape(&f.name),
            f.position,
            f.lag_records,
            f.lag_seconds,
            escape(&f.state)
        );
    }
    body.push_str("</tbody></table>");
    if page.inbox_marks > 0 {
        let _ = write!(
            body,
            "<p>({} consumer inbox marks not shown)</p>",
            page.inbox_marks
        );
    }
    layout("Followers", "/followers", &body)
}

pub(crate) fn relay_page(_: &Shared, page: &RelayPage) -> String {
    let mut body = String::new();
    for r in &page.relays {
        let _ = write!(
            body,
            "<section class=\"relay\"><h2>{}</h2><dl><dt>position</dt><dd>{}</dd><dt>head</dt><dd>{}</dd>\
             <dt>pending</dt><dd class=\"pending\">{}</dd><dt>lag seconds</dt><dd>{:.3}</dd>\
             <dt>parked</dt><dd class=\"parked\">{}</dd><dt>last error</dt><dd>{}</dd></dl>",
            escape(&r.name),
            r.position,
            r.head,
            r.pending,
            r.lag_seconds,
            r.parked.len(),
            r.last_error
                .as_ref()
                .map_or("none".to_owned(), |e| escape(&e.to_string()))
        );
        if let Some(metrics) = &r.metrics {
            let _ = write!(
                body,
                "<pre class=\"payload\">{}</pre>",
                escape(&json_text(metrics))
            );
        }
        if !r.parked.is_empty() {
            body.push_str("<table class=\"parked\"><thead><tr><th>notification</th><th>stream</th><th>topic</th>\
                           <th>exchange</th><th>routing key</th><th>reason</th></tr></thead><tbody>");
            for p in &r.parked {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    p.notification_id,
                    stream_link(&p.stream_id),
                    escape(&p.topic),
                    escape(&p.exchange),
                    escape(&p.routing_key),
                    escape(&p.reason)
                );
            }
            body.push_str("</tbody></table>");
        }
        body.push_str("</section>");
    }
    layout("Relay", "/relay", &body)
}

pub(crate) fn dead_letters_page(_: &Shared, page: &DeadLettersPage) -> String {
    let mut body = String::new();
    if page.queues.is_empty() {
        body.push_str("<p>No queues configured (--dead-letters QUEUE).</p>");
    }
    if !page.actions_allowed {
        body.push_str(
            "<p class=\"note\">Read-only: start with --allow-actions to retry or purge.</p>",
        );
    }
    body.push_str("<p id=\"action-result\"></p>");
    for q in &page.queues {
        let queue = url_path(&q.queue);
        let _ = write!(
            body,
            "<section class=\"queue\" data-queue=\"{}\"><h2>{} <small>({})</small></h2>\
             <p><span class=\"total\">{}</span> dead letters.",
            escape(&q.queue),
            escape(&q.queue),
            escape(&q.dead_letter_queue),
            q.total
        );
        if page.actions_allowed && q.total > 0 {
            let _ = write!(
                body,
                " <button class=\"action\" data-action=\"/api/dead-letters/{queue}/retry\">Retry all</button>\
                 <button class=\"action danger\" data-action=\"/api/dead-letters/{queue}/purge\" \
                 data-confirm=\"Purge every dead letter of this queue?\">Purge all</button>"
            );
        }
        body.push_str("</p>");
        if let Some(stats) = &q.stats {
            let _ = write!(
                body,
                "<pre class=\"payload\">{}</pre>",
                escape(&json_text(stats))
            );
        }
        if !q.letters.is_empty() {
            body.push_str("<table class=\"letters\"><thead><tr><th>cqrs_id</th><th>reason</th><th>attempts</th><th>body</th></tr></thead><tbody>");
            for l in &q.letters {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"reason\">{}</td><td>{}</td><td><pre class=\"payload\">{}</pre></td></tr>",
                    escape(l.cqrs_id.as_deref().unwrap_or("-")),
                    escape(l.reason.as_deref().unwrap_or("-")),
                    l.attempts.map_or("-".to_owned(), |n| n.to_string()),
                    escape(&json_text(&l.body))
                );
            }
            body.push_str("</tbody></table>");
        }
        body.push_str("</section>");
    }
    layout("Dead letters", "/dead-letters", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_data_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_stream_id_becomes_one_path_segment() {
        assert_eq!(url_path("a/b c?d"), "a%2Fb%20c%3Fd");
        assert_eq!(url_path("w-1.x_y~"), "w-1.x_y~");
    }
}
