// Node.js Socket.IO 4, the peer bench/peers.py measures beside Presence: idle sockets on
// the websocket transport alone, per-message compression off, Engine.IO pings every
// HEARTBEAT_INTERVAL seconds (5 s in the benchmark), and nothing else. GET /readyz and
// /healthz answer a JSON object, so the benchmark's start-up wait and stall probe work
// as they do for the Python servers.
//
//   node bench/peers/server.js PORT        (or PORT=... in the environment; HOST too)
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT);
const host = process.env.HOST || "127.0.0.1";
const pingInterval = Math.round(1000 * Number(process.env.HEARTBEAT_INTERVAL || 5));
const pingTimeout = Math.round(1000 * Number(process.env.PRESENCE_PING_TIMEOUT || 20));
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node server.js PORT");
  process.exit(2);
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && (req.url === "/readyz" || req.url === "/healthz")) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: req.url === "/readyz" ? "ready" : "ok" }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  pingInterval,
  pingTimeout,
  maxHttpBufferSize: 64 * 1024,
  serveClient: false,
});
// The default namespace accepts every connection; the sockets only sit there.
io.on("connection", () => {});

httpServer.listen({ port, host, backlog: 8192 }, () => {
  console.error(
    `socket.io ${require("socket.io/package.json").version} on node ${process.version}: ` +
      `${host}:${port}, pingInterval ${pingInterval} ms, pingTimeout ${pingTimeout} ms`,
  );
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
