// The custom kinds of a render (a JSON list, made by custom_kinds.py), validated
// against their CRD schemas with the @kubernetes-models packages. renders.py runs
// this as `node --input-type=module -e <this file> FILE` in .tools/node, so that
// the packages resolve from there (hence process.argv[1]). Prints each valid
// kind; exits 1 after printing every invalid one.
import fs from "node:fs";
const { HTTPRoute } = await import("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute");
const { ServiceMonitor } = await import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor");
const { PrometheusRule } = await import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule");
const models = {
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};
let failed = 0;
for (const doc of JSON.parse(fs.readFileSync(process.argv[1], "utf8"))) {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  try {
    if (!Model) throw new Error("no schema for this kind");
    new Model(doc).validate();
    console.log(`${doc.kind}`);
  } catch (e) {
    console.error(`ERROR ${doc.kind}/${doc.metadata.name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
