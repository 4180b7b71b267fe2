// The seed's Node.js `ws` broadcast server (shared/seed), kept as written except:
// - the port comes from PORT (default 8080) and it listens on HOST (default 127.0.0.1);
// - the per-message log ("Received: ...") is off, since it would dominate the measurement.
// Every message a client sends is broadcast, as text prefixed "Message from server: ",
// to every open client, the sender included.
const WebSocket = require('ws');
// Create a WebSocket server
const server = new WebSocket.Server({
    host: process.env.HOST || '127.0.0.1',
    port: Number(process.env.PORT || 8080),
});

server.on('listening', () => {
    console.log(`listening on ${server.options.host}:${server.options.port}`);
});

server.on('connection', (socket) => {
    console.log('Client connected');

    // Listen for messages from the client
    socket.on('message', (message) => {
        // console.log(`Received: ${message}`);  // per-message log: off for benchmarks

        // Broadcast the message to all connected clients
        server.clients.forEach((client) => {
            if (client.readyState === WebSocket.OPEN) {
                client.send(`Message from server: ${message}`);
            }
        });
    });

    // Handle connection closure
    socket.on('close', () => {
        console.log('Client disconnected');
    });
});
