DROP VIEW shop.customer_order_totals;
