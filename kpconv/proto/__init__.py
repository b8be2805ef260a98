"""``tf.train.Example`` messages without TensorFlow: the protobuf library's classes for the vendored
``feature.proto`` and ``example.proto`` beside this file.

The two byte strings are those files compiled (serialized ``FileDescriptorProto``s, what ``protoc
--python_out`` embeds; copied from ``tensorflow.core.example.*_pb2``, and ``tests/test_records.py``
checks that they still equal TensorFlow's). They live in a private descriptor pool, so that importing
TensorFlow in the same process never conflicts with them.
"""
from google.protobuf import descriptor_pool, message_factory

FEATURE_PROTO = b'\n%tensorflow/core/example/feature.proto\x12\ntensorflow"\x1a\n\tBytesList\x12\r\n\x05value\x18\x01 \x03(\x0c"\x1e\n\tFloatList\x12\x11\n\x05value\x18\x01 \x03(\x02B\x02\x10\x01" \n\tInt64List\x12\x13\n\x05value\x18\x01 \x03(\x03B\x04\x10\x010\x01"\x98\x01\n\x07Feature\x12+\n\nbytes_list\x18\x01 \x01(\x0b2\x15.tensorflow.BytesListH\x00\x12+\n\nfloat_list\x18\x02 \x01(\x0b2\x15.tensorflow.FloatListH\x00\x12+\n\nint64_list\x18\x03 \x01(\x0b2\x15.tensorflow.Int64ListH\x00B\x06\n\x04kind"\x83\x01\n\x08Features\x122\n\x07feature\x18\x01 \x03(\x0b2!.tensorflow.Features.FeatureEntry\x1aC\n\x0cFeatureEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12"\n\x05value\x18\x02 \x01(\x0b2\x13.tensorflow.Feature:\x028\x01"3\n\x0bFeatureList\x12$\n\x07feature\x18\x01 \x03(\x0b2\x13.tensorflow.Feature"\x9c\x01\n\x0cFeatureLists\x12?\n\x0cfeature_list\x18\x01 \x03(\x0b2).tensorflow.FeatureLists.FeatureListEntry\x1aK\n\x10FeatureListEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12&\n\x05value\x18\x02 \x01(\x0b2\x17.tensorflow.FeatureList:\x028\x01B\x81\x01\n\x16org.tensorflow.exampleB\rFeatureProtosP\x01ZSgithub.com/tensorflow/tensorflow/tensorflow/go/core/example/example_protos_go_proto\xf8\x01\x01b\x06proto3'
EXAMPLE_PROTO = b'\n%tensorflow/core/example/example.proto\x12\ntensorflow\x1a%tensorflow/core/example/feature.proto"1\n\x07Example\x12&\n\x08features\x18\x01 \x01(\x0b2\x14.tensorflow.Features"i\n\x0fSequenceExample\x12%\n\x07context\x18\x01 \x01(\x0b2\x14.tensorflow.Features\x12/\n\rfeature_lists\x18\x02 \x01(\x0b2\x18.tensorflow.FeatureListsB\x81\x01\n\x16org.tensorflow.exampleB\rExampleProtosP\x01ZSgithub.com/tensorflow/tensorflow/tensorflow/go/core/example/example_protos_go_proto\xf8\x01\x01b\x06proto3'

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(FEATURE_PROTO)
_pool.AddSerializedFile(EXAMPLE_PROTO)

Example = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.Example"))
Feature = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.Feature"))
