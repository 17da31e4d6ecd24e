'use client';

import { useEffect } from 'react';
import { useChatSession } from '../../../hooks/useChatSession';
import ChatInterface from '../../../components/chat/ChatInterface';

export default function ChatPage() {
    const { startSession, stopSession, navigateToHub } = useChatSession();

    useEffect(() => {
        // Get or create session ID
        const sessionId = getOrCreateSessionId(); // Your session creation logic
        startSession(sessionId);

        return () => {
            stopSession();
        };
    }, [startSession, stopSession]);

    const handleBackToHub = () => {
        navigateToHub(); // This will cleanup and navigate
    };

    return (
        <div className="chat-page">
            <header>
                <button onClick={handleBackToHub}>
                    ‚Üê Back to Hub
                </button>
            </header>
            <ChatInterface />
        </div>
    );
}
