import { ensureTool, TEMPORAL_CLI, TEMPORAL_TEST_SERVER } from '../cli/temporalTools';

/** Setup step: make sure the Temporal CLI and the time-skipping test server are available. */
try {
  for (const tool of [TEMPORAL_CLI, TEMPORAL_TEST_SERVER]) {
    console.log(`${tool.what}: ${ensureTool(tool, console.log)}`);
  }
} catch (err) {
  console.error(`dacp: ${(err as Error).message}`);
  process.exit(1);
}
