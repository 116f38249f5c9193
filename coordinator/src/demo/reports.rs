//! The reports part of `herald demo`: a small ERP schema (customers, invoices and their
//! lines), an invoice report rendered through a template, and 500 business cases whose
//! 1–8 documents are output as one group each to a file spool by four coordinators. It
//! prints how many groups came out, and shows that none came out twice and none is
//! missing, counting both the files in the spool and the output records.
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::{pg, wait_until};
use crate::db;

const GROUPS: i64 = 500;
const SESSIONS: i64 = 5;

const SETUP: &str = r#"
CREATE TABLE demo.customer (id int PRIMARY KEY, name text NOT NULL, city text NOT NULL);
CREATE TABLE demo.invoice (no bigint PRIMARY KEY, customer int NOT NULL REFERENCES demo.customer,
                           business_case int NOT NULL, issued date NOT NULL);
CREATE TABLE demo.invoice_line (invoice bigint REFERENCES demo.invoice, pos int, article text,
                                qty int, price numeric(10,2), PRIMARY KEY (invoice, pos));
INSERT INTO demo.customer
SELECT i, (ARRAY['Müller GmbH', 'ACME Corp', 'Schmidt & Söhne', 'Nordwind AG', 'Bäckerei Klein'])[1 + i % 5]
          || ' ' || i, (ARRAY['Berlin', 'Hamburg', 'München', 'Köln'])[1 + i % 4]
  FROM generate_series(1, 100) i;
SELECT herald.report('invoice', $q$
    SELECT i.no, c.name AS customer, c.city, i.issued, l.pos, l.article, l.qty,
           l.price::text AS price, (l.qty * l.price)::text AS amount,
           (sum(l.qty * l.price) OVER ())::text AS total
      FROM demo.invoice i JOIN demo.customer c ON c.id = i.customer
      JOIN demo.invoice_line l ON l.invoice = i.no
     WHERE i.no = ($1->>'invoice')::bigint
     ORDER BY l.pos $q$, 'text', template => $t$
INVOICE {{ rows[0].no }}    {{ rows[0].issued }}
{{ rows[0].customer }}, {{ rows[0].city }}
{% for r in rows %}  {{ r.pos }}. {{ r.article }}  {{ r.qty }} x {{ r.price }} = {{ r.amount }}
{% endfor %}TOTAL {{ rows[0].total }}
$t$);
SELECT herald.output_channel('invoice_spool', 'file', 'invoices');
"#;

/// Submit the business cases of one session: each gets its invoices (and lines), then a
/// group with one report job per invoice, sealed at once.
async fn submit(config: tokio_postgres::Config, session: i64) -> Result<(), String> {
    let c = db::connect(&config, &format!("demo-erp-{session}"))
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..GROUPS / SESSIONS {
        let case = session * 1000 + i;
        let documents = (case * 7 + 3) % 8 + 1;
        c.batch_execute("BEGIN").await.map_err(pg)?;
        let group: i64 = c
            .query_one(
                "SELECT herald.create_report_group('business case ' || $1::text, 'invoice_spool')",
                &[&case.to_string()],
            )
            .await
            .map_err(pg)?
            .get(0);
        for d in 0..documents {
            let no = case * 10 + d;
            c.execute(
                "WITH i AS (INSERT INTO demo.invoice VALUES ($1::bigint, 1 + ($1::bigint % 100)::int, $2::int, current_date))
                 INSERT INTO demo.invoice_line
                 SELECT $1::bigint, p, (ARRAY['paper', 'toner', 'stapler', 'desk', 'lamp'])[1 + (p + $1::bigint % 5)::int % 5],
                        1 + p % 3, (5 + p * 7.25)::numeric(10,2)
                   FROM generate_series(1, 1 + ($1::bigint % 4)::int) p",
                &[&no, &(case as i32)],
            )
            .await
            .map_err(pg)?;
            c.execute(
                "SELECT herald.submit_report('invoice', jsonb_build_object('invoice', $1::bigint), $2)",
                &[&no, &group],
            )
            .await
            .map_err(pg)?;
        }
        c.execute("SELECT herald.seal_group($1)", &[&group])
            .await
            .map_err(pg)?;
        c.batch_execute("COMMIT").await.map_err(pg)?;
    }
    Ok(())
}

pub(super) async fn run(
    admin: &tokio_postgres::Client,
    config: &tokio_postgres::Config,
    spool: &Path,
    coordinators: usize,
) -> Result<(), String> {
    admin.batch_execute(SETUP).await.map_err(pg)?;
    println!(
        "\nReports: {GROUPS} business cases, each a group of 1–8 invoices (a report job each), \
         output as one file per group by {coordinators} coordinators to {}",
        spool.join("invoices").display()
    );
    let started = Instant::now();
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        let config = config.clone();
        sessions.push(tokio::spawn(async move { submit(config, s).await }));
    }
    for s in sessions {
        s.await.map_err(|e| e.to_string())??;
    }
    wait_until(
        admin,
        &format!(
            "SELECT count(*) = {GROUPS} FROM herald.report_output o JOIN herald.report_group g ON g.id = o.group_id
              WHERE o.state = 'sent' AND g.name LIKE 'business case %'"
        ),
        300,
    )
    .await?;
    let elapsed = started.elapsed();
    let row = admin
        .query_one(
            "SELECT count(DISTINCT o.group_id), count(*),
                    (SELECT count(*) FROM herald.report_job),
                    (SELECT count(*) FROM herald.report_group g WHERE g.members >= 2
                        AND (SELECT count(DISTINCT j.node) FROM herald.report_job r
                               JOIN herald.job j ON j.id = r.job
                              WHERE r.group_id = g.id AND r.member_no >= g.members - 1) = 2)
               FROM herald.report_output o",
            &[],
        )
        .await
        .map_err(pg)?;
    let (groups, records, documents, raced): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let files: HashSet<String> = std::fs::read_dir(spool.join("invoices"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let expected: HashSet<String> = admin
        .query(
            "SELECT 'group-' || id || '.txt' FROM herald.report_group",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let missing = expected.difference(&files).count();
    let extra = files.difference(&expected).count();
    println!(
        "  {groups} of {GROUPS} groups output ({documents} invoices) in {:.1} s; {records} output records, {} files in the spool",
        elapsed.as_secs_f64(),
        files.len()
    );
    println!(
        "  none twice: {} group(s) with more than one output record, {extra} unexpected file(s); none missing: {missing} group(s) without a file",
        records - groups
    );
    println!(
        "  groups whose last two invoices were generated on two different nodes (the race the group lock settles): {raced}"
    );
    let by_node = admin
        .query(
            "SELECT node, count(*) FROM herald.report_output GROUP BY node ORDER BY node",
            &[],
        )
        .await
        .map_err(pg)?;
    let spread: Vec<String> = by_node
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    println!("  output written by: {}", spread.join(", "));
    let sample = admin
        .query_one(
            "SELECT convert_from(content, 'UTF8') FROM herald.report_job ORDER BY job LIMIT 1",
            &[],
        )
        .await
        .map_err(pg)?;
    let sample: String = sample.get(0);
    println!("  the first invoice, as rendered:");
    for line in sample.lines().filter(|l| !l.trim().is_empty()) {
        println!("    | {line}");
    }
    if records != groups || missing > 0 || extra > 0 || groups != GROUPS {
        return Err("a group was output twice or not at all".into());
    }
    Ok(())
}
