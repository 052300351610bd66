-- pgtenant demo: the sample multi-tenant schema, created on every node as role app.
--
-- Colocation group 1 (bigint tenants): accounts.id, orders.account_id.
-- Colocation group 2 (text tenants):   events.tenant.
-- Reference table (every node):        plans.
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    plan_id int NOT NULL
);
CREATE TABLE orders (
    account_id bigint NOT NULL,
    id bigint NOT NULL,
    amount int NOT NULL,
    note text,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE events (
    tenant text NOT NULL,
    id bigserial,
    payload text,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE plans (
    id int PRIMARY KEY,
    name text NOT NULL
);
