//! The operator console (`leadpipe console`), the real binary against the real broker and
//! database: its access rules, its pages' figures against the delivery log, finding a lead,
//! and replaying a destination's dead letters once their cause is fixed. The browser tests
//! (`console_browser.rs`) do the same through a headless Chromium.

use std::collections::HashMap;
use std::time::Duration;

use leadpipe_tests::stream::{Driver, Processes, Stream};
use leadpipe_tests::{Pipeline, amqp_url, bin_path, eventually, free_port, spawn_console};

pub(crate) const TOKEN: &str = "console-test-token";

const WAIT: Duration = Duration::from_secs(60);

/// A running console and a client that carries its token.
pub(crate) struct Console {
    _child: tokio::process::Child,
    pub base: String,
    pub http: reqwest::Client,
}

impl Console {
    /// The console on `p`'s namespace and database with `TOKEN` and `env`, answering.
    pub(crate) async fn start(p: &Pipeline, env: &[(&str, String)]) -> Self {
        let env: Vec<(&str, String)> = [("CONSOLE_TOKEN", TOKEN.to_owned())]
            .into_iter()
            .chain(env.iter().cloned())
            .collect();
        let (child, base) = spawn_console(p, &bin_path("leadpipe"), &env).await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            _child: child,
            base,
            http,
        }
    }

    /// GETs `path` with the token: status and body.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// POSTs a form to `path` with the token: status, `Location` and body.
    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status().as_u16(), location, r.text().await.unwrap())
    }
}

/// The CSRF token of a page's forms.
pub(crate) fn csrf(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with its CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// The whole pipeline as processes with a mixed stream of `events` posted (some refused for
/// good by Meta and by Google) and decided everywhere; its driver.
pub(crate) async fn decided_run(events: usize) -> (Processes, Driver) {
    let run = Processes::start(Pipeline::new().await, None, 1, vec![]).await;
    let stream = Stream::new(events);
    let mut driver = run.driver();
    driver.post(&stream, 0..stream.batches.len()).await;
    let want = driver.accepted.len() * leadpipe_registry::REGISTRY.destinations().len();
    let decided = eventually(WAIT, || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries WHERE status NOT IN ('in_flight', 'retrying', 'accepted')",
        )
        .fetch_one(&run.p.pool)
        .await
        .unwrap();
        n as usize == want
    })
    .await;
    assert!(decided, "the stream was never decided everywhere");
    (run, driver)
}

/// Meta's dead letters of a run, from the delivery log.
pub(crate) async fn dead_at_meta(p: &Pipeline) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_id FROM deliveries WHERE destination = 'meta' AND status = 'dead_lettered' ORDER BY event_id",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap()
}

/// What no page may show: the stream's contact data, raw or hashed.
pub(crate) fn assert_no_personal_data(page: &str, html: &str) {
    for pii in ["@example.com", "650 555", "6505551234", "Ada"] {
        assert!(!html.contains(pii), "{page} shows {pii:?}");
    }
    for i in [0, 13, 49] {
        let hashed = leadpipe_events::sha256_hex(&format!("lead{i}@example.com"));
        assert!(!html.contains(&hashed), "{page} shows a hashed email");
    }
}

async fn insert(p: &Pipeline, destination: &str, id: &str, status: &str, error: Option<&str>) {
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts,
                                 last_http_status, last_error_code, last_error_message, bucket,
                                 lead_id, source)
         VALUES ($1, $2, 'lead', $3, 2, 400, $4, $5, date_trunc('day', now()), 'L-1', 'site-widget')",
    )
    .bind(destination)
    .bind(id)
    .bind(status)
    .bind(error.map(|_| "meta_100"))
    .bind(error)
    .execute(&p.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_console_finds_an_events_rows_at_every_destination_behind_its_token() {
    // Arrange: one event sent to GA4 and refused by Meta, with a message that holds markup.
    let p = Pipeline::new().await;
    insert(&p, "ga4", "evt-1", "sent", None).await;
    insert(
        &p,
        "meta",
        "evt-1",
        "dead_lettered",
        Some("bad <script>x</script> value"),
    )
    .await;
    let console = Console::start(&p, &[]).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", console.base);

    // Act + Assert: without the token, or with another one, 401 and the login form.
    let none = plain
        .get(url("/events?event_id=evt-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let login = none.text().await.unwrap();
    assert!(!login.contains("dead_lettered"));
    assert!(login.contains(r#"action="/login""#), "{login}");
    let wrong = plain
        .get(url("/"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // With it: every destination's row, the error code and message escaped.
    let (status, html) = console.get("/events?event_id=evt-1").await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"data-destination="ga4""#), "{html}");
    assert!(html.contains(r#"data-destination="meta""#), "{html}");
    assert!(
        html.contains("dead_lettered") && html.contains("meta_100"),
        "{html}"
    );
    assert!(
        html.contains("bad &lt;script&gt;x&lt;/script&gt; value"),
        "{html}"
    );
    assert!(!html.contains("<script>x"), "{html}");

    // By lead and by source and time; a bad time is named.
    let (_, by_lead) = console.get("/events?lead_id=L-1").await;
    assert!(by_lead.contains("2 row(s) of 1 event(s)"), "{by_lead}");
    let (_, by_source) = console.get("/events?source=site-widget").await;
    assert!(by_source.contains("2 row(s) of 1 event(s)"), "{by_source}");
    let (status, bad) = console
        .get("/events?source=site-widget&from=yesterday")
        .await;
    assert_eq!(status, 400);
    assert!(
        bad.contains("from &quot;yesterday&quot; is not a time"),
        "{bad}"
    );

    // An id with no row says why there may be none.
    let (status, missing) = console.get("/events?event_id=nope").await;
    assert_eq!(status, 200);
    assert!(missing.contains("No delivery recorded for"));

    // The login form: a wrong token is refused, the right one sets a session cookie that
    // opens the pages; logging out ends it.
    let csrf = csrf(&login);
    let refused = plain
        .post(url("/login"))
        .form(&[("csrf", csrf.as_str()), ("token", "nope"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let in_ = plain
        .post(url("/login"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", TOKEN),
            ("next", "/events?event_id=evt-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(in_.status(), 303);
    assert_eq!(in_.headers()["location"], "/events?event_id=evt-1");
    let cookie = in_.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie carries the token itself"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = plain
        .get(url("/events?event_id=evt-1"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let out = plain
        .post(url("/logout"))
        .header("cookie", &session)
        .form(&[("csrf", self::csrf(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Replay is off unless allowed: no buttons, and a post is refused even with its token.
    let (_, dead) = console.get("/dead-letters/meta").await;
    assert!(dead.contains(r#"id="replay-off""#), "{dead}");
    let (status, _, body) = console
        .post(
            "/dead-letters/meta/plan",
            &[("csrf", &csrf), ("error_code", "")],
        )
        .await;
    assert_eq!(status, 403);
    assert!(body.contains("CONSOLE_ALLOW_REPLAY=true"), "{body}");

    // A form of another site is refused; so is a stale CSRF token.
    let cross = console
        .http
        .post(url("/logout"))
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let (status, _, _) = console.post("/logout", &[("csrf", "stale")]).await;
    assert_eq!(status, 403);

    // Every page says not to cache or frame it.
    let r = console.http.get(url("/")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );

    // When the delivery log goes away, pages say so with 503 (and the console stays up).
    leadpipe_tests::drop_database(&p.database_url).await;
    let (status, body) = console.get("/events?event_id=evt-1").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot be read right now"), "{body}");
    let (status, _) = console.get("/").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn an_operator_finds_a_lead_and_replays_its_dead_letters_once_the_cause_is_fixed() {
    // Arrange: a mixed stream decided everywhere; Meta refused two events for good.
    let (run, _driver) = decided_run(120).await;
    let p = &run.p;
    let dead = dead_at_meta(p).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let console = Console::start(
        p,
        &[
            ("CONSOLE_ALLOW_REPLAY", "true".into()),
            ("CONSOLE_SENDERS", run.console_senders()),
            // No management API there (the broker on 5672 has no management plugin; the
            // cluster test reads one): the overview says so and shows the rest.
            (
                "RABBITMQ_MANAGEMENT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    )
    .await;

    // Act + Assert: the overview's figures are the delivery log's and the broker's.
    let (status, overview) = console.get("/").await;
    assert_eq!(status, 200);
    assert!(
        overview.contains(r#"id="management""#) && overview.contains("rates are missing"),
        "{overview}"
    );
    assert_no_personal_data("the overview", &overview);
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT destination, status, count(*) FROM deliveries GROUP BY 1, 2")
            .fetch_all(&p.pool)
            .await
            .unwrap();
    let day = &overview[overview.find(r#"id="last-day""#).unwrap()..];
    for (d, s, n) in &counts {
        let row = &day[day.find(&format!(r#"data-destination="{d}""#)).unwrap()..];
        let cell = format!(r#"data-status="{s}">{n}<"#);
        assert!(
            row[..row.find("</tr>").unwrap()].contains(&cell),
            "{d} {s}: want {n} in {row}"
        );
    }
    for d in leadpipe_registry::REGISTRY.destinations() {
        let row = &overview[overview
            .find(&format!(r#"<tr data-destination="{}""#, d.as_str()))
            .unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(r#"data-state="ready""#),
            "{}: {row}",
            d.as_str()
        );
        let dlq = counts
            .iter()
            .find(|(x, s, _)| x == d.as_str() && s == "dead_lettered")
            .map_or(0, |c| c.2);
        assert!(
            row.contains(&format!(">{dlq}</a>")),
            "{}: DLQ {dlq} in {row}",
            d.as_str()
        );
    }

    // Finding the lead of a dead letter shows its rows at every destination.
    let lead: String = sqlx::query_scalar(
        "SELECT lead_id FROM deliveries WHERE destination = 'meta' AND event_id = $1",
    )
    .bind(&dead[0])
    .fetch_one(&p.pool)
    .await
    .unwrap();
    let (_, found) = console.get(&format!("/events?lead_id={lead}")).await;
    assert_no_personal_data("find by lead", &found);
    for d in leadpipe_registry::REGISTRY.destinations() {
        assert!(
            found.contains(&format!(
                r#"data-destination="{}" data-event="{}""#,
                d.as_str(),
                dead[0]
            )),
            "{found}"
        );
    }

    // The dead letters of Meta, by error code, with the ids.
    let (_, letters) = console.get("/dead-letters/meta").await;
    assert_no_personal_data("the dead letters", &letters);
    assert!(
        letters.contains(r#"<tr data-code="meta_100">"#),
        "{letters}"
    );
    assert!(
        letters.contains(r#"<td class="n count">2</td>"#),
        "{letters}"
    );
    for id in &dead {
        assert!(letters.contains(id), "{id} missing: {letters}");
    }
    let (status, _) = console.get("/dead-letters/nowhere").await;
    assert_eq!(status, 404);

    // The dry run says what would move and moves nothing.
    let token = csrf(&letters);
    let (status, _, plan) = console
        .post(
            "/dead-letters/meta/plan",
            &[("csrf", &token), ("error_code", "meta_100")],
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert!(
        plan.contains(r#"<strong class="replay">2</strong> of 2 message(s)"#),
        "{plan}"
    );
    assert!(
        plan.contains(r#"<strong class="too-old">0</strong>"#),
        "{plan}"
    );
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 2 }).await);
    let (status, _, _) = console
        .post(
            "/dead-letters/meta/replay",
            &[("csrf", "forged"), ("error_code", "meta_100")],
        )
        .await;
    assert_eq!(status, 403);

    // Fixed: the replay runs, says how far it is, and delivers each event once.
    p.meta.accept_rejected();
    let (status, location, _) = console
        .post(
            "/dead-letters/meta/replay",
            &[("csrf", &token), ("error_code", "meta_100")],
        )
        .await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/replays/"), "{location}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let last = loop {
        let (_, page) = console.get(&location).await;
        if page.contains(r#"data-state="done""#) || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(last.contains(r#"data-state="done""#), "{last}");
    assert!(
        last.contains(r#"<strong class="replayed">2</strong>"#),
        "{last}"
    );
    for id in &dead {
        p.wait_status(id, "sent", WAIT).await;
    }
    let accepted: HashMap<String, usize> = p.meta.accepted();
    for id in &dead {
        assert_eq!(accepted.get(id), Some(&1), "{id}");
    }
    let (_, after) = console.get("/dead-letters/meta").await;
    assert!(after.contains("0 message(s) in"), "{after}");

    // A sender that cannot send says why: Meta refuses the token (paused, the new event left
    // in its work queue); a sender that is gone is unreachable.
    let mut run = run;
    run.p.meta.set_token("rotated");
    let after_rotation = run
        .p
        .publish(&leadpipe_tests::recent_lead("L-after-rotation"))
        .await;
    let tiktok = run
        .senders
        .iter()
        .position(|(d, _)| d.as_str() == "tiktok")
        .unwrap();
    run.kill(&[tiktok]).await;
    let row = |html: &str, d: &str| {
        let at = html
            .find(&format!(r#"<tr data-destination="{d}""#))
            .unwrap();
        let row = &html[at..];
        row[..row.find("</tr>").unwrap()].to_owned()
    };
    let mut overview = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        overview = console.get("/").await.1;
        let meta = row(&overview, "meta");
        if meta.contains(r#"data-state="paused""#)
            && meta.contains(r#"data-queue="work">1<"#)
            && row(&overview, "tiktok").contains(r#"data-state="unreachable""#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meta = row(&overview, "meta");
    assert!(meta.contains(r#"data-state="paused""#), "{meta}");
    assert!(
        meta.contains("paused: the destination refuses requests"),
        "{meta}"
    );
    assert!(meta.contains(r#"data-queue="work">1<"#), "{meta}");
    assert!(
        row(&overview, "tiktok").contains(r#"data-state="unreachable""#),
        "{overview}"
    );

    // The token is right again: the probe passes and the sender is half-open while its trial
    // batch (the event left in the work queue) waits on a slow Meta, then ready, and the
    // event is sent.
    run.p.meta.set_latency(Duration::from_secs(3));
    run.p.meta.set_token(leadpipe_tests::META_TOKEN);
    let half_open = eventually(WAIT, || async {
        row(&console.get("/").await.1, "meta").contains(r#"data-state="half-open""#)
    })
    .await;
    assert!(half_open, "{}", row(&console.get("/").await.1, "meta"));
    let half = row(&console.get("/").await.1, "meta");
    assert!(half.contains("a trial batch goes first"), "{half}");
    run.p.meta.set_latency(Duration::ZERO);
    run.p.wait_status(&after_rotation, "sent", WAIT).await;
    let ready = eventually(WAIT, || async {
        row(&console.get("/").await.1, "meta").contains(r#"data-state="ready""#)
    })
    .await;
    assert!(ready, "{}", row(&console.get("/").await.1, "meta"));
    run.stop().await;
}

#[tokio::test]
async fn a_sender_in_dry_run_shows_as_such_with_its_dry_run_rows() {
    // Arrange: Meta's sender in DRY_RUN, the console reading its /readyz.
    let p = Pipeline::new().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sender = p.spawn_destination_binary_with(
        leadpipe_meta_sender::DESTINATION,
        &[
            ("DRY_RUN", "true".to_owned()),
            ("METRICS_ADDR", addr.clone()),
        ],
    );
    let console = Console::start(&p, &[("CONSOLE_SENDERS", format!("meta=http://{addr}"))]).await;

    // Act: a lead reaches it.
    let id = p.publish(&leadpipe_tests::recent_lead("L-dry")).await;
    p.wait_status(&id, "dry_run", WAIT).await;

    // Assert: ready, tagged dry run, the row counted as dry run; nothing reached Meta.
    let at = |html: &str| {
        let start = html.find(r#"<tr data-destination="meta""#).unwrap();
        let row = &html[start..];
        row[..row.find("</tr>").unwrap()].to_owned()
    };
    let shown = eventually(WAIT, || async {
        let meta = at(&console.get("/").await.1);
        meta.contains(r#"data-state="ready""#) && meta.contains("dry run")
    })
    .await;
    let overview = console.get("/").await.1;
    let meta = at(&overview);
    assert!(shown, "{meta}");
    let hour = at(&overview[overview.find(r#"id="last-hour""#).unwrap()..]);
    assert!(hour.contains(r#"data-status="dry_run">1<"#), "{hour}");
    assert!(p.meta.accepted().is_empty());
    leadpipe_tests::sigterm_and_wait(&mut sender).await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_console_refuses_what_it_cannot_serve() {
    // Without a token, an address other machines reach: exit 2, naming the variable.
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("CONSOLE_ADDR", format!("0.0.0.0:{}", free_port()))
        .env_remove("CONSOLE_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CONSOLE_TOKEN"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");

    // Bad variables are named.
    for (name, value) in [
        ("RABBITMQ_MANAGEMENT_URL", "127.0.0.1:15672"),
        ("CONSOLE_ADDR", "localhost"),
        ("CONSOLE_ALLOW_REPLAY", "maybe"),
        ("CONSOLE_SENDERS", "meta"),
        ("CONSOLE_SENDERS", "metta=http://127.0.0.1:9101"),
        ("CONSOLE_SENDERS", "meta=ftp://x"),
        ("CONSOLE_SENDER_URL", "not a url {port}"),
    ] {
        let out = tokio::process::Command::new(bin_path("leadpipe"))
            .arg("console")
            .env("CONSOLE_ADDR", format!("127.0.0.1:{}", free_port()))
            .env(name, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }

    // A database it cannot reach: exit 1, naming DATABASE_URL without its password.
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("CONSOLE_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:secret@127.0.0.1:{}/x", free_port()),
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && !stderr.contains("secret"),
        "{stderr}"
    );

    // Without a token, a request addressed to another name (DNS rebinding) is refused.
    let p = Pipeline::new().await;
    let port = free_port();
    let _open = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("DATABASE_URL", &p.database_url)
        .env("AMQP_URL", amqp_url())
        .env("CONSOLE_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("CONSOLE_TOKEN")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(20), || async {
            reqwest::get(format!("{base}/"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    let rebound = reqwest::Client::new()
        .get(format!("{base}/"))
        .header("host", format!("attacker.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
}
