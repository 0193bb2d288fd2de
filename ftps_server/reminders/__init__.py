"""Certificate reminders: what each certificate and address looks like (`findings`), the daily
decision and sending (`run`), the dedup state and spool (`store`), the email (`mail`, with
`templates/`) and the `remind` command (`command`). Never imports the server."""
