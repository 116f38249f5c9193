// graphile-worker's side of bench phase 7: a backlog of JOBS no-op jobs, then one worker
// with CONCURRENCY parallel jobs drains it. Prints one line of JSON: {"jobs":..,"seconds":..}.
import { run, makeWorkerUtils, Logger } from "graphile-worker";

// Quiet, as Herald runs with HERALD_LOG=warn: no line per job.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

const connectionString = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS ?? 20000);
const concurrency = Number(process.env.CONCURRENCY ?? 10);

const utils = await makeWorkerUtils({ connectionString, logger });
await utils.migrate();
await utils.withPgClient((c) =>
  c.query("SELECT graphile_worker.add_job('noop') FROM generate_series(1, $1)", [jobs]),
);
await utils.withPgClient((c) => c.query("VACUUM ANALYZE graphile_worker._private_jobs"));
const left = async () =>
  Number(
    (await utils.withPgClient((c) => c.query("SELECT count(*) AS n FROM graphile_worker._private_jobs")))
      .rows[0].n,
  );

const started = process.hrtime.bigint();
const runner = await run({
  connectionString,
  concurrency,
  noHandleSignals: true,
  pollInterval: 1000,
  logger,
  taskList: { noop: async () => {} },
});
while ((await left()) > 0) {
  await new Promise((r) => setTimeout(r, 20));
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await runner.stop();
await utils.release();
console.log(JSON.stringify({ jobs, seconds }));
