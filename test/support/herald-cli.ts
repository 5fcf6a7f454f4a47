// The `herald` binary, run from the sources (tests spawn it with `node --import tsx`).
import { main } from '../../src/cli/main.js';
main();
