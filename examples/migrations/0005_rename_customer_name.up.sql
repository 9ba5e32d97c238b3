-- Release v3: "name" becomes "full_name". The migration is fine; release v3's code is not (see examples/README.md).
ALTER TABLE shop.customers RENAME COLUMN name TO full_name;
