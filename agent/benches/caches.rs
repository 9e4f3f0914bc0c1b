//! What the agent's watch caches hold per route, same run: N copies of the objects one route
//! puts in them (its ServiceRoute with the operator's status, its VirtualIP claim, its
//! EndpointSlice of 10 backends; `fixtures/`, taken from a lab of `bench --scale`), decoded
//! from the API server's JSON and stored in reflector stores as the agent's watches store
//! them. Once as `k8s-openapi` decodes them with only `managedFields` dropped (the baseline:
//! the agent before its slim types), once as the agent caches them now (`slim::EndpointSlice`,
//! the route trimmed to what DNS reads, `route_index::trim`). Also a core Service's
//! kube-controller-manager slice, upstream against slim.
//!
//! `cargo bench -p switchyard-agent --bench caches [-- --sizes 1000,100000]` (no I/O).

use anyhow::{Context, Result};
use k8s_openapi::api::discovery::v1 as upstream;
use kube::Resource;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use switchyard_agent::route_index::trim;
use switchyard_agent::slim::EndpointSlice;
use switchyard_api::{ServiceRoute, VirtualIP};

#[path = "support/heap.rs"]
mod heap;
use heap::heap;

const ROUTE: &str = include_str!("fixtures/route.json");
const VIP: &str = include_str!("fixtures/vip.json");
const ROUTE_SLICE: &str = include_str!("fixtures/route-slice.json");
const SERVICE_SLICE: &str = include_str!("fixtures/service-slice.json");

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    args.find(|a| a == name)?;
    args.next()
}

/// N distinct copies of `fixture` as the JSON a watch delivers (names made unique).
fn copies(fixture: &str, n: usize) -> Result<Vec<Vec<u8>>> {
    let v: serde_json::Value = serde_json::from_str(fixture).context("fixture")?;
    (0..n)
        .map(|i| {
            let mut o = v.clone();
            let name = o["metadata"]["name"].as_str().unwrap_or("o").to_string();
            o["metadata"]["name"] = format!("{name}-{i}").into();
            o["metadata"]["resourceVersion"] = (1000 + i).to_string().into();
            serde_json::to_vec(&o).context("copy")
        })
        .collect()
}

/// Heap bytes a reflector store of `docs` holds, decoded as `K` and passed through `modify`.
fn stored<K>(docs: &[Vec<u8>], modify: fn(&mut K)) -> Result<usize>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Send + Sync + 'static,
{
    let before = heap();
    let (_store, mut writer) = reflector::store::<K>();
    for d in docs {
        let mut o: K = serde_json::from_slice(d).context("decode")?;
        modify(&mut o);
        writer.apply_watcher_event(&Event::Apply(o));
    }
    Ok(heap().saturating_sub(before))
}

fn managed_fields_only<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

fn per(bytes: usize, n: usize) -> String {
    format!("{:.0}", bytes as f64 / n.max(1) as f64)
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "1000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "| routes | ServiceRoute, upstream / agent | VirtualIP, upstream / agent | route's EndpointSlice (10 backends), upstream / slim | per route, before / now | ratio | kcm slice (10), upstream / slim |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        let (routes, vips, slices, kslices) = (
            copies(ROUTE, n)?,
            copies(VIP, n)?,
            copies(ROUTE_SLICE, n)?,
            copies(SERVICE_SLICE, n)?,
        );
        let route_full = stored::<ServiceRoute>(&routes, managed_fields_only)?;
        let route_now = stored::<ServiceRoute>(&routes, trim)?;
        let vip_full = stored::<VirtualIP>(&vips, managed_fields_only)?;
        let vip_now = stored::<VirtualIP>(&vips, trim)?;
        let slice_full = stored::<upstream::EndpointSlice>(&slices, managed_fields_only)?;
        let slice_now = stored::<EndpointSlice>(&slices, trim)?;
        let kslice_full = stored::<upstream::EndpointSlice>(&kslices, managed_fields_only)?;
        let kslice_now = stored::<EndpointSlice>(&kslices, trim)?;
        let before = route_full + vip_full + slice_full;
        let now = route_now + vip_now + slice_now;
        println!(
            "| {n} | {} / {} B | {} / {} B | {} / {} B | {} / {} B | {:.2} | {} / {} B |",
            per(route_full, n),
            per(route_now, n),
            per(vip_full, n),
            per(vip_now, n),
            per(slice_full, n),
            per(slice_now, n),
            per(before, n),
            per(now, n),
            now as f64 / before.max(1) as f64,
            per(kslice_full, n),
            per(kslice_now, n),
        );
    }
    Ok(())
}
