# A small image with datumfs and fuse3, for running a job with its data mounted:
#
#   docker build -t datumfs .
#   docker run --rm --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
#       -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_REGION \
#       datumfs run /valohai --input data=s3://bucket/train/ --store s3://bucket/datumfs -- \
#       sh -c 'ls $VH_INPUTS_DIR/data'
#
# A job image of your own takes the binary from this one:
#   COPY --from=datumfs /usr/local/bin/datumfs /usr/local/bin/datumfs   (and installs fuse3)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin datumfs \
    && install -m 0755 target/release/datumfs /usr/local/bin/datumfs

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/datumfs /usr/local/bin/datumfs
RUN ln -s /usr/local/bin/datumfs /sbin/mount.fuse.datumfs
# datumfs run is a proper PID 1: it forwards stop signals to the job and reaps orphans.
ENTRYPOINT ["/usr/local/bin/datumfs"]
CMD ["--help"]
