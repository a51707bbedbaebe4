#!/bin/sh
# Image build step: add Hadoop's S3A connector (hadoop-aws + the AWS SDK bundle it needs)
# to pyspark's jars, at the Hadoop version pyspark ships, so s3a:// paths work with no
# download at run time. Ivy resolves the matching SDK bundle from hadoop-aws's POM.
set -eu
: "${SPARK_HOME:?SPARK_HOME must point at pyspark}"
api_jar=$(ls "$SPARK_HOME"/jars/hadoop-client-api-*.jar)
hadoop_version=$(basename "$api_jar" .jar | sed 's/^hadoop-client-api-//')
ivy_dir=$(mktemp -d)
echo 'print("resolved")' > "$ivy_dir/noop.py"
"$SPARK_HOME/bin/spark-submit" --master 'local[1]' \
  --conf spark.jars.ivy="$ivy_dir" \
  --packages "org.apache.hadoop:hadoop-aws:${hadoop_version}" "$ivy_dir/noop.py"
cp "$ivy_dir"/jars/org.apache.hadoop_hadoop-aws-*.jar "$ivy_dir"/jars/software.amazon.awssdk_bundle-*.jar \
  "$SPARK_HOME/jars/"
rm -rf "$ivy_dir"
echo "install-s3a-jars: added hadoop-aws ${hadoop_version} and its AWS SDK bundle to $SPARK_HOME/jars"
