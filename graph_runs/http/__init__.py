"""What speaks HTTP: the execution API's client, the approvals webhook, the local API."""
