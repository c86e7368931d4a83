"""The HTTP API (`echoforge serve`): narration jobs over HTTP for tenants holding API keys; no torch, no worker/."""
