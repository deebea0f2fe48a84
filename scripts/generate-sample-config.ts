/** Writes config.sample.yaml from the config schema (see src/config/sample.ts). */
import { writeFileSync } from "node:fs";
import { renderSampleConfig } from "../src/config/sample.ts";

writeFileSync(new URL("../config.sample.yaml", import.meta.url), renderSampleConfig());
