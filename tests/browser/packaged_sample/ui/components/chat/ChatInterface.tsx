// The sample's own chat interface, which the spec leaves to the app.
export default function ChatInterface() {
    return <main aria-label="Chat">Chat</main>;
}
