// The peer for livehub-bench: the Node `ws` broadcast server of the project's seed tutorial.
//
// Adapted minimally for the benchmark:
// - it listens on $PORT (0 = any free port) and prints {"port": P} once listening;
// - every connected client is a subscriber (subscribing is connecting); the publisher is
//   excluded, as in the seed (`client !== ws`);
// - a message is re-sent with the frame type it came in (text stays text, binary stays binary)
//   instead of always as binary (ws 8 hands `message` over as a Buffer);
// - it exits when its stdin closes, so it never outlives the benchmark driver.
const WebSocket = require('ws');

const wss = new WebSocket.Server({ port: Number(process.env.PORT || 0), host: '127.0.0.1' });

wss.on('listening', () => {
  process.stdout.write(JSON.stringify({ port: wss.address().port }) + '\n');
});

wss.on('connection', ws => {
  ws.on('message', (message, isBinary) => {
    wss.clients.forEach(client => {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(message, { binary: isBinary });
      }
    });
  });
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
