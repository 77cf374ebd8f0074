"""The local execution API: a real server implementing the contract, for development and tests."""
