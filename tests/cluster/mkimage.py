#!/usr/bin/env python3
"""Write a single-layer OCI image archive (for `ctr -n k8s.io images import`)
from a directory or a tar file, without buildah, podman or a registry.

  mkimage.py --name localhost/porchlight/pause:1 --rootfs DIR|TAR \
      [--entrypoint '["/pause"]'] [--cmd '[...]'] [--env K=V ...] [--workdir /] \
      [--user 65535:65535] -o out.tar

Deterministic: file times and owners inside the layer are normalized, so the
same input gives the same image digest.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def layer_from_dir(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                arc = os.path.relpath(full, root)
                info = tar.gettarinfo(full, arcname=arc)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--rootfs", required=True, help="directory or (uncompressed) tar")
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir")
    ap.add_argument("--user")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()

    if os.path.isdir(a.rootfs):
        layer = layer_from_dir(a.rootfs)
    else:
        with open(a.rootfs, "rb") as f:
            layer = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = gzip.compress(layer, mtime=0)

    cfg = {"Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    if a.workdir:
        cfg["WorkingDir"] = a.workdir
    if a.user:
        cfg["User"] = a.user
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/cluster/mkimage.py"}],
    }, sort_keys=True).encode()

    blobs = {}

    def blob(data, media_type):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"mediaType": media_type, "digest": "sha256:" + d, "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }, sort_keys=True).encode()
    mdesc = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    mdesc["platform"] = {"architecture": "amd64", "os": "linux"}
    mdesc["annotations"] = {
        "io.containerd.image.name": a.name,
        "org.opencontainers.image.ref.name": a.name,
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [mdesc]}, sort_keys=True).encode()

    tmp = a.output + ".tmp"
    with tarfile.open(tmp, "w") as out:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for d, data in sorted(blobs.items()):
            add("blobs/sha256/" + d, data)
    os.replace(tmp, a.output)
    print(f"{a.output}: {a.name} manifest {mdesc['digest']}")


if __name__ == "__main__":
    main()
