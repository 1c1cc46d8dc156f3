// The Bun peer for livehub-bench: a broadcast server on Bun's own WebSocket server (Bun.serve)
// and its built-in topic pub/sub, the fastest way Bun offers to fan a message out.
//
// It behaves as the Node peer (../peer/server.js) does, so that the same load clients
// measure both:
// - it listens on $PORT (0 = any free port) on 127.0.0.1 and prints {"port": P} once listening;
// - every connected client is a subscriber (`ws.subscribe` on open: subscribing is
//   connecting); clients send nothing but what they publish;
// - a message goes to every other subscriber with `ws.publish`, which excludes the sender,
//   as the Node peer does, and keeps the frame type it came in (a string stays text, a
//   buffer binary);
// - it exits when its stdin closes, so it never outlives the benchmark driver.
// Bun's settings are its defaults (no compression, 16 MiB backpressure limit per socket).
const TOPIC = 'bench';

const server = Bun.serve({
  port: Number(process.env.PORT || 0),
  hostname: '127.0.0.1',
  fetch(req, server) {
    if (server.upgrade(req)) {
      return undefined;
    }
    return new Response('WebSocket only', { status: 426 });
  },
  websocket: {
    open(ws) {
      ws.subscribe(TOPIC);
    },
    message(ws, message) {
      ws.publish(TOPIC, message);
    },
  },
});

process.stdout.write(JSON.stringify({ port: server.port }) + '\n');

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
