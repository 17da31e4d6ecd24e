// The app around the spec's page, as Vite's React template starts one: StrictMode on.
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import ChatPage from './app/contribution/chat/page';

function Hub() {
    return <h1>Hub</h1>;
}

createRoot(document.getElementById('root')).render(
    <StrictMode>{window.location.pathname === '/hub' ? <Hub /> : <ChatPage />}</StrictMode>,
);
