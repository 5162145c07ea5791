"""Chat platform adapters (Telegram, Discord, local web). They only translate platform events."""
