"""The MariaDB data set of the backup/restore drill (tests/e2e/test_backup.py)
and benchmark (bench/bench_backup.py): one schema, scale times the rows."""

from __future__ import annotations

# Objects a dump must carry besides tables: a view, a trigger, a routine, an event.
OBJECTS = """CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 9000;
CREATE TRIGGER orders_ins BEFORE INSERT ON orders FOR EACH ROW SET NEW.total = IFNULL(NEW.total, 0);
CREATE PROCEDURE customer_count(OUT n INT) SELECT COUNT(*) INTO n FROM customers;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM orders WHERE status = 'void' AND placed < '2000-01-01';
"""


def shop_sql(scale: int = 1, objects: bool = False) -> str:
    """The shop schema with scale x 120k rows (scale 1: ~7 MB of SQL); objects: with OBJECTS."""
    n = max(1, scale)
    return f"""
CREATE DATABASE IF NOT EXISTS shop;
USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(128), created DATETIME,
  balance DECIMAL(12,2), note TEXT NULL) ENGINE=InnoDB;
INSERT INTO customers SELECT seq, CONCAT('customer-', seq), CONCAT('c', seq, '@example.com'),
  '2020-01-01' + INTERVAL (seq % 1500) DAY, (seq * 37 % 100000) / 100, IF(seq % 7 = 0, NULL, MD5(seq))
  FROM seq_1_to_{20000 * n};
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL, total DECIMAL(12,2),
  status ENUM('new','paid','shipped','void'), placed TIMESTAMP NULL, KEY (customer_id)) ENGINE=InnoDB;
INSERT INTO orders SELECT seq, 1 + seq % 20000, (seq * 7919 % 1000000) / 100,
  ELT(1 + seq % 4, 'new','paid','shipped','void'),
  '2021-01-01' + INTERVAL (seq * 13 % 86400000) SECOND FROM seq_1_to_{50000 * n};
CREATE TABLE order_lines (order_id INT NOT NULL, line TINYINT NOT NULL, sku CHAR(12), qty SMALLINT, price DOUBLE,
  PRIMARY KEY (order_id, line)) ENGINE=InnoDB;
INSERT INTO order_lines SELECT 1 + seq DIV 2, seq % 2, UPPER(LEFT(SHA1(seq), 12)), 1 + seq % 9, (seq % 1000) * 1.25
  FROM seq_0_to_{40000 * n - 1};
CREATE TABLE blobs (id INT AUTO_INCREMENT PRIMARY KEY, data VARBINARY(255), flag BIT(1)) ENGINE=InnoDB;
INSERT INTO blobs (data, flag) SELECT UNHEX(CONCAT(MD5(seq), SHA1(seq))), seq % 2 FROM seq_1_to_{10000 * n};
""" + (OBJECTS if objects else "")
