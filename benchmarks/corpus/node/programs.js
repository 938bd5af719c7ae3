// The corpus's Node.js programs, instrumented with the official OpenTelemetry JS SDK
// (@opentelemetry/sdk-node, the auto-instrumentations and the runtime-node instrumentation, from
// npm; benchmarks/corpus/fetch.sh installs them). Configured as a deployment would: OTEL_SERVICE_NAME,
// OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, OTEL_METRIC_EXPORT_INTERVAL.
//   node programs.js pricing PORT            an HTTP service (http instrumentation)
//   node programs.js leak MB_PER_MIN START_S keeps MB_PER_MIN of JS objects a minute from START_S
//   node programs.js steady                  allocates and drops the same amount every second
'use strict';
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node');
const { RuntimeNodeInstrumentation } = require('@opentelemetry/instrumentation-runtime-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-proto');
const { PeriodicExportingMetricReader } = require('@opentelemetry/sdk-metrics');

const sdk = new NodeSDK({
  traceExporter: new OTLPTraceExporter(),
  metricReader: new PeriodicExportingMetricReader({
    exporter: new OTLPMetricExporter(),
    exportIntervalMillis: Number(process.env.OTEL_METRIC_EXPORT_INTERVAL || 60000),
  }),
  instrumentations: [
    getNodeAutoInstrumentations({ '@opentelemetry/instrumentation-fs': { enabled: false } }),
    new RuntimeNodeInstrumentation(),
  ],
});
sdk.start();
process.on('SIGTERM', () => sdk.shutdown().finally(() => process.exit(0)));

const http = require('http');
const [role, ...args] = process.argv.slice(2);

function pricing(port) {
  http.createServer((req, res) => {
    let total = 0;
    for (let i = 0; i < 20000; i++) total += i * i;
    const body = String(total);
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
    res.end(body);
  }).listen(Number(port), '127.0.0.1');
}

function leak(mbPerMin, startS) {
  const kept = [];
  const t0 = Date.now();
  const perSecond = (Number(mbPerMin) * 1024 * 1024) / 60;
  setInterval(() => {
    let garbage = [];
    for (let i = 0; i < 2000; i++) garbage.push({ i, s: 'x'.repeat(64) });
    garbage = null;
    if ((Date.now() - t0) / 1000 >= Number(startS)) {
      // about perSecond bytes of JS heap: arrays of small distinct strings
      const chunk = new Array(Math.floor(perSecond / 64));
      for (let i = 0; i < chunk.length; i++) chunk[i] = `${i}:${Math.random()}`.padEnd(40, '.');
      kept.push(chunk);
    }
  }, 1000);
}

function steady() {
  setInterval(() => {
    let garbage = [];
    for (let i = 0; i < 20000; i++) garbage.push({ i, s: 'x'.repeat(64) });
    garbage = null;
  }, 1000);
}

({ pricing, leak, steady })[role](...args);
