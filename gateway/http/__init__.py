"""The wire surface: handlers, body reading, streamed responses, CORS, hosts, auth, the request guard."""
