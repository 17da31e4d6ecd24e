// The Presence API is reached through Vite's proxy, so the app and the API share
// its origin, as in a deployment behind one host.
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const target = process.env.PRESENCE_API;
const proxy = { '/api': { target, ws: true } };

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
});
