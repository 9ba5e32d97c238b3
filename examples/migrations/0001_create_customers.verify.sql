SELECT id, email, name, created_at FROM shop.customers WHERE false;
