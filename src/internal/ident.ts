import { InvalidOptionError } from '../errors.js';

/** Quotes an SQL identifier: the one place identifiers enter SQL text. */
export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Validates a schema name option (letters, digits, underscore; at most 63 bytes) and returns it quoted. */
export function schemaIdent(schema: string, option = 'schema'): string {
  if (typeof schema !== 'string' || !SCHEMA_NAME.test(schema)) {
    throw new InvalidOptionError(option, schema, 'an identifier of letters, digits and underscores, at most 63 bytes');
  }
  return quoteIdent(schema);
}
