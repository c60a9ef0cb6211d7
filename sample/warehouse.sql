-- The bundled sample warehouse: 5,000 customers, generated deterministically.
-- scripts/make-sample.sh builds sample/warehouse.db from this file.
CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  email TEXT NOT NULL,
  first_name TEXT NOT NULL,
  last_name TEXT NOT NULL,
  plan TEXT NOT NULL,
  country TEXT NOT NULL,
  lifetime_value NUMERIC NOT NULL,
  active BOOLEAN NOT NULL,
  signed_up_at TIMESTAMP NOT NULL,
  updated_at TIMESTAMP NOT NULL
);

WITH RECURSIVE
  seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 5000),
  first_names(i, name) AS (VALUES (0,'Ada'),(1,'Grace'),(2,'Alan'),(3,'Edsger'),(4,'Barbara'),
    (5,'Donald'),(6,'Margaret'),(7,'Ken'),(8,'Frances'),(9,'Dennis'),(10,'Radia'),(11,'Linus'),
    (12,'Sophie'),(13,'Tim'),(14,'Hedy'),(15,'John')),
  last_names(i, name) AS (VALUES (0,'Lovelace'),(1,'Hopper'),(2,'Turing'),(3,'Dijkstra'),
    (4,'Liskov'),(5,'Knuth'),(6,'Hamilton'),(7,'Thompson'),(8,'Allen'),(9,'Ritchie'),
    (10,'Perlman'),(11,'Torvalds'),(12,'Wilson'),(13,'Berners-Lee'),(14,'Lamarr'),(15,'Backus')),
  plans(i, name) AS (VALUES (0,'free'),(1,'free'),(2,'free'),(3,'starter'),(4,'starter'),
    (5,'pro'),(6,'pro'),(7,'enterprise')),
  countries(i, code) AS (VALUES (0,'US'),(1,'GB'),(2,'FR'),(3,'DE'),(4,'JP'),(5,'BR'),(6,'IN'),
    (7,'CA'),(8,'AU'),(9,'NL'))
INSERT INTO customers
SELECT
  n,
  lower(f.name) || '.' || lower(replace(l.name, '-', '')) || '.' || n || '@example.com',
  f.name,
  l.name,
  p.name,
  c.code,
  printf('%.2f', ((n * 7919) % 100000) / 10.0),
  (n % 11) <> 0,
  strftime('%Y-%m-%dT%H:%M:%SZ', '2023-01-01', '+' || ((n * 37) % 700) || ' days',
           '+' || ((n * 13) % 86400) || ' seconds'),
  strftime('%Y-%m-%dT%H:%M:%SZ', '2025-06-01', '+' || ((n * 17) % 300) || ' days',
           '+' || ((n * 29) % 86400) || ' seconds')
FROM seq
JOIN first_names f ON f.i = n % 16
JOIN last_names l ON l.i = (n / 16) % 16
JOIN plans p ON p.i = (n * 5) % 8
JOIN countries c ON c.i = (n * 3) % 10;
