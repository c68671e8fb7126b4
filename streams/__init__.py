"""Kafka, Faust and RocksDB adapters of the ledger (the domain is in ``ledger``)."""
